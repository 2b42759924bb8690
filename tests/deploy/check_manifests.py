#!/usr/bin/python3
"""The Kubernetes manifests and the Compose file parse and hang together.

YAML is parsed with PyYAML; then the structure Kubernetes would check first: kinds and API
versions, selectors that match the pod labels, named ports that exist, the ConfigMap the
pods mount, and a vbd.toml in it that vbd itself accepts.
"""
import json
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request

import yaml


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def main(repo, vbd):
    with open(f"{repo}/deploy/kubernetes/vbd.yaml") as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {d["kind"]: d for d in documents}
    check(set(by_kind) == {"Namespace", "ConfigMap", "DaemonSet", "Service"},
          f"manifests hold {sorted(by_kind)}")
    for d in documents:
        check("apiVersion" in d and "name" in d["metadata"], f"{d['kind']} has apiVersion and name")
    daemonset = by_kind["DaemonSet"]
    check(daemonset["apiVersion"] == "apps/v1", "DaemonSet is apps/v1")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    check(daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
          "DaemonSet selector matches its pod labels")
    service = by_kind["Service"]
    check(service["spec"]["clusterIP"] == "None", "Service is headless")
    check(service["spec"]["selector"].items() <= pod_labels.items(),
          "Service selects the daemon pods")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        check(port["targetPort"] in port_names, f"Service port {port['name']} targets a container port")
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        check(mount["name"] in volumes, f"volume {mount['name']} exists")
    config_map = by_kind["ConfigMap"]
    check(volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"],
          "pods mount the ConfigMap")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as toml:
        toml.write(config_map["data"]["vbd.toml"])
        toml.flush()
        # vbd reads the file before the flags: a file it accepts shows as the complaint about
        # the deliberately bad --port that follows, and nothing starts serving.
        result = subprocess.run([vbd, "--config", toml.name, "--port", "-5"],
                                capture_output=True, text=True, timeout=30)
        check("server.port" in result.stderr and "unknown key" not in result.stderr,
              "vbd accepts every key of the ConfigMap's vbd.toml (then refuses the bad --port)")
    compose = subprocess.run(["docker-compose", "-f", f"{repo}/deploy/docker-compose.yml",
                              "config", "--quiet"], capture_output=True, text=True, timeout=60)
    check(compose.returncode == 0, f"docker-compose config accepts deploy/docker-compose.yml "
                                   f"{compose.stderr}")

    check_modelarts_image(repo, vbd)


def check_modelarts_image(repo, vbd):
    """The ModelArts image's entrypoint, run as it is but on loopback and a free port: vbd
    accepts its flags, serves GET /health as ModelArts expects, answers every API that
    config.json declares, and drains and exits 0 on SIGTERM."""
    with open(f"{repo}/docker/modelarts/config.json") as f:
        config = json.load(f)
    check(config["model_type"] == "Image" and config["health"]["url"] == "/health",
          "config.json declares a custom image with /health")
    with open(f"{repo}/docker/Dockerfile.modelarts") as f:
        dockerfile = f.read().replace("\\\n", " ")
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    check(entrypoint[entrypoint.index("--http-port") + 1] == "8080", "the image serves on 8080")
    args = [vbd] + entrypoint[1:]
    args[args.index("--config") + 1] = f"{repo}/deploy/vbd.toml"
    args[args.index("--http-port") + 1] = "0"
    args[args.index("--http-host") + 1] = "127.0.0.1"
    args += ["--port", "0"]
    daemon = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in daemon.stdout:
            if line.startswith("vbd http on "):
                port = int(line.rsplit(":", 1)[1])
            if line.startswith("vbd listening on "):
                break
        check(port is not None, "vbd with the image's flags announces its HTTP face")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            check(reply.status == 200 and json.load(reply) == {"health": "true"},
                  "GET /health answers 200 {\"health\": \"true\"}")
        for api in config["apis"]:
            url = re.sub(r"\{digest\}", "0" * 64, api["url"])
            request = urllib.request.Request(f"http://127.0.0.1:{port}{url}",
                                             method=api["method"].upper(),
                                             data=b"" if api["method"] == "post" else None)
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    body = reply.read().decode()
            except urllib.error.HTTPError as error:
                body = error.read().decode()
            check("no route" not in body, f"vbd serves {api['method']} {api['url']} ({body[:80]})")
        daemon.send_signal(signal.SIGTERM)
        check(daemon.wait(timeout=30) == 0, "vbd drains and exits 0 on SIGTERM")
    finally:
        if daemon.poll() is None:
            daemon.kill()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
