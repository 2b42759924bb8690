#!/usr/bin/python3
"""/metrics as Prometheus's own tools see it.

Starts a real vbd with /metrics on a free loopback port, moves a counter with vbctl, has
`promtool check metrics` lint the exposition, then runs a real Prometheus server on
loopback that scrapes the daemon and asks it, through its HTTP API, for that counter.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

TIMEOUT_S = 60


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def start_vbd(vbd):
    process = subprocess.Popen([vbd, "--port", "0", "--metrics-port", "0"],
                               stdout=subprocess.PIPE, text=True)
    lines = [process.stdout.readline(), process.stdout.readline()]
    metrics = re.match(r"vbd metrics on 127\.0\.0\.1:(\d+)", lines[0])
    grpc = re.match(r"vbd listening on (127\.0\.0\.1:\d+)", lines[1])
    if not metrics or not grpc:
        process.kill()
        raise AssertionError(f"unexpected vbd output: {lines}")
    return process, int(metrics.group(1)), grpc.group(1)


def get_info_calls(vbctl, address, count):
    for _ in range(count):
        subprocess.run([vbctl, "--address", address, "info"], check=True,
                       stdout=subprocess.DEVNULL, timeout=TIMEOUT_S)


def query(prometheus_port, expression):
    url = (f"http://127.0.0.1:{prometheus_port}/api/v1/query?"
           + urllib.parse.urlencode({"query": expression}))
    answer = json.loads(get(url))
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for_value(prometheus_port, expression, expected):
    deadline = time.monotonic() + TIMEOUT_S
    value = None
    while time.monotonic() < deadline:
        try:
            value = query(prometheus_port, expression)
        except OSError:
            value = None  # still starting
        if value == expected:
            return value
        time.sleep(0.5)
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vbd", required=True)
    parser.add_argument("--vbctl", required=True)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="vbd-metrics-")
    vbd, metrics_port, address = start_vbd(args.vbd)
    prometheus = None
    try:
        get_info_calls(args.vbctl, address, 3)
        text = get(f"http://127.0.0.1:{metrics_port}/metrics")
        check('vbd_requests_total{code="OK",op="GetInfo"} 3' in text,
              "GetInfo counted three times in /metrics")
        for family in ("vbd_request_duration_seconds", "vbd_queue_calls", "vbd_inflight_calls",
                       "vbd_weight_store_bytes", "vbd_device_memory_bytes", "vbd_tier_bytes",
                       "vbd_received_bytes_total", "vbd_sent_bytes_total"):
            check(f"# TYPE {family} " in text, f"{family} is exposed")
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                              capture_output=True, timeout=TIMEOUT_S)
        check(lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(),
              f"promtool check metrics accepts it {lint.stdout}{lint.stderr}")

        prometheus_port = free_port()
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n"
                    "scrape_configs:\n  - job_name: vbd\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{metrics_port}']\n")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(work, 'data')}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        series = 'vbd_requests_total{job="vbd",op="GetInfo",code="OK"}'
        check(wait_for_value(prometheus_port, series, 3.0) == 3.0,
              "a real Prometheus scraped the daemon and answers 3")
        get_info_calls(args.vbctl, address, 2)
        check(wait_for_value(prometheus_port, series, 5.0) == 5.0,
              "after two more calls it answers 5")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=TIMEOUT_S)
        vbd.send_signal(signal.SIGTERM)
        vbd.wait(timeout=TIMEOUT_S)
        shutil.rmtree(work, ignore_errors=True)
    print("metrics test passed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
