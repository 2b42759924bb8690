#!/usr/bin/python3
"""Interop over the HTTP face: a client written from the README alone (urllib, struct, no
libvb) uploads a weight in two parts, runs Linear forward and backward and a named op, and
checks the answers with plain Python arithmetic and the documented error codes."""
import argparse
import hashlib
import json
import random
import signal
import struct
import subprocess
import urllib.error
import urllib.request

TIMEOUT_S = 30


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def encode(header, tensors):
    """tensors: [(name, shape, [floats])] as float32."""
    header = dict(header, tensors=[{"name": n, "dtype": "float32", "shape": s}
                                   for n, s, _ in tensors])
    raw = b"".join(struct.pack(f"<{len(v)}f", *v) for _, _, v in tensors)
    return json.dumps(header).encode() + b"\n" + raw


def decode(body):
    line, _, raw = body.partition(b"\n")
    header = json.loads(line)
    out, offset = {}, 0
    for t in header["tensors"]:
        assert t["dtype"] == "float32"
        count = 1
        for d in t["shape"]:
            count *= d
        out[t["name"]] = (t["shape"], list(struct.unpack_from(f"<{count}f", raw, offset)))
        offset += 4 * count
    assert offset == len(raw), "bytes left over"
    return header, out


def call(base, method, path, body=None, content_type="application/vnd.vb.tensors"):
    request = urllib.request.Request(base + path, data=body, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vbd", required=True)
    args = parser.parse_args()
    daemon = subprocess.Popen([args.vbd, "--port", "0", "--http-port", "0", "--metrics-port", "-1"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = None
        for line in daemon.stdout:
            if line.startswith("vbd http on "):
                port = int(line.rsplit(":", 1)[1])
            if line.startswith("vbd listening on "):
                break
        check(port is not None, "vbd announces its HTTP face")
        base = f"http://127.0.0.1:{port}"

        status, body = call(base, "GET", "/health")
        check(status == 200 and json.loads(body) == {"health": "true"}, "GET /health")

        rng = random.Random(5)
        out_f, in_f, rows = 3, 5, 4
        weight = [rng.uniform(-1, 1) for _ in range(out_f * in_f)]
        bias = [rng.uniform(-1, 1) for _ in range(out_f)]
        x = [rng.uniform(-1, 1) for _ in range(rows * in_f)]
        weight_bytes = struct.pack(f"<{len(weight)}f", *weight)
        digest = hashlib.sha256(weight_bytes).hexdigest()
        total = len(weight_bytes)

        status, body = call(base, "GET", f"/v1/weights/{digest}")
        check(status == 404 and json.loads(body)["error_code"] == "VB.NOT_FOUND",
              "an unknown weight is 404 VB.NOT_FOUND")
        status, body = call(base, "POST", f"/v1/weights/{digest}?offset=0&total={total}",
                            weight_bytes[:24], "application/octet-stream")
        check(status == 200 and json.loads(body)["complete"] is False, "first part accepted")
        status, body = call(base, "POST", f"/v1/weights/{digest}?offset=40&total={total}",
                            weight_bytes[40:], "application/octet-stream")
        check(status == 409, "a part out of order is 409")
        status, body = call(base, "POST", f"/v1/weights/{digest}?offset=0&total={total}",
                            weight_bytes[:24], "application/octet-stream")
        status, body = call(base, "POST", f"/v1/weights/{digest}?offset=24&total={total}",
                            weight_bytes[24:], "application/octet-stream")
        check(status == 200 and json.loads(body)["complete"] is True, "second part completes it")

        ref = {"digest": digest, "dtype": "float32", "shape": [out_f, in_f]}
        status, body = call(base, "POST", "/v1/linear/forward",
                            encode({"weight": ref}, [("input", [rows, in_f], x),
                                                     ("bias", [out_f], bias)]))
        check(status == 200, f"forward answers 200 ({body[:100]!r})")
        header, tensors = decode(body)
        shape, y = tensors["output"]
        expected = [sum(x[r * in_f + k] * weight[o * in_f + k] for k in range(in_f)) + bias[o]
                    for r in range(rows) for o in range(out_f)]
        check(shape == [rows, out_f], "output shape")
        check(max(abs(a - b) for a, b in zip(y, expected)) < 1e-5, "output values")
        check("timing" in header, "answer carries timing")

        g = [rng.uniform(-1, 1) for _ in range(rows * out_f)]
        status, body = call(base, "POST", "/v1/linear/backward",
                            encode({"weight": ref, "need_grad_bias": False},
                                   [("grad_output", [rows, out_f], g), ("input", [rows, in_f], x)]))
        check(status == 200, "backward answers 200")
        _, grads = decode(body)
        check(set(grads) == {"grad_input", "grad_weight"}, "only the gradients asked for")
        gi = [sum(g[r * out_f + o] * weight[o * in_f + k] for o in range(out_f))
              for r in range(rows) for k in range(in_f)]
        gw = [sum(g[r * out_f + o] * x[r * in_f + k] for r in range(rows))
              for o in range(out_f) for k in range(in_f)]
        check(max(abs(a - b) for a, b in zip(grads["grad_input"][1], gi)) < 1e-5, "grad_input")
        check(max(abs(a - b) for a, b in zip(grads["grad_weight"][1], gw)) < 1e-5, "grad_weight")

        # A named op: causal attention, checked with plain arithmetic.
        seq, dim = 3, 2
        q = [rng.uniform(-1, 1) for _ in range(seq * dim)]
        k = [rng.uniform(-1, 1) for _ in range(seq * dim)]
        v = [rng.uniform(-1, 1) for _ in range(seq * dim)]
        status, body = call(base, "POST", "/v1/ops/attention.forward",
                            encode({"attributes": {"is_causal": True}},
                                   [("query", [1, 1, seq, dim], q), ("key", [1, 1, seq, dim], k),
                                    ("value", [1, 1, seq, dim], v)]))
        check(status == 200, f"attention answers 200 ({body[:100]!r})")
        _, outputs = decode(body)
        expected = []
        for i in range(seq):
            scores = [sum(q[i * dim + d] * k[j * dim + d] for d in range(dim)) / dim ** 0.5
                      for j in range(i + 1)]
            top = max(scores)
            weights = [2.718281828459045 ** (s - top) for s in scores]
            expected += [sum(w * v[j * dim + d] for j, w in enumerate(weights)) / sum(weights)
                         for d in range(dim)]
        check(max(abs(a - b) for a, b in zip(outputs["output"][1], expected)) < 1e-5,
              "causal attention values")
        status, body = call(base, "POST", "/v1/ops/attention.sideways",
                            encode({}, [("query", [1, 1, seq, dim], q)]))
        check(status == 400 and "attention.sideways" in json.loads(body)["error_msg"],
              "an unknown op is 400 and named")

        status, body = call(base, "POST", "/v1/linear/forward",
                            encode({"weight": dict(ref, shape=[out_f, in_f + 1])},
                                   [("input", [rows, in_f], x)]))
        error = json.loads(body)
        check(status == 400 and error["error_code"] == "VB.INVALID_ARGUMENT",
              f"mismatched shapes are 400 VB.INVALID_ARGUMENT: {error['error_msg']}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        check(daemon.wait(timeout=TIMEOUT_S) == 0, "vbd exits 0 on SIGTERM")


if __name__ == "__main__":
    main()
