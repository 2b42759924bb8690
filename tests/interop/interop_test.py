#!/usr/bin/python3
"""Interop test: a client we did not write can use the vbd wire contract.

Every other test talks to vbd through libvb, which shares code with the daemon, so a
contract that only works because both sides share helpers would go unnoticed there. This
test builds a client from nothing but proto/vb/v1/compute.proto, with Debian's stock
python3-grpcio / python3-protobuf and the stock protoc, and checks the results with plain
Python arithmetic (no numpy): GetInfo, weight upload and dedup, QueryWeights, LinearForward
with chunked tensors both ways, and the documented status codes for two errors.

Run with the system interpreter (/usr/bin/python3): the one on PATH may lack grpc.
"""
import argparse
import hashlib
import math
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading

RPC_TIMEOUT_S = 30
STARTUP_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 20
# Far below the daemon's 1 MiB so that every tensor we send spans several chunks.
SEND_CHUNK_BYTES = 4096


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def generate_python_stubs(proto_dir, work_dir):
    """Runs the stock protoc + grpc plugin, exactly as an outside client would."""
    os.makedirs(work_dir, exist_ok=True)
    subprocess.run(["/usr/bin/protoc", f"--proto_path={proto_dir}", f"--python_out={work_dir}",
                    f"--grpc_out={work_dir}",
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                    "vb/v1/compute.proto"], check=True, timeout=60)
    # protoc writes no packages; the generated grpc module imports vb.v1.compute_pb2.
    for package in ("vb", "vb/v1"):
        open(os.path.join(work_dir, package, "__init__.py"), "a").close()
    sys.path.insert(0, work_dir)


def start_daemon(vbd_path):
    """Starts vbd on a free port; returns (process, port) once it serves."""
    # No /metrics here: this test speaks only the gRPC contract.
    process = subprocess.Popen([vbd_path, "--port", "0", "--metrics-port", "-1"],
                               stdout=subprocess.PIPE, text=True)
    # readline blocks, so a timer kills a daemon that never announces itself.
    watchdog = threading.Timer(STARTUP_TIMEOUT_S, process.kill)
    watchdog.start()
    try:
        line = process.stdout.readline()
    finally:
        watchdog.cancel()
    match = re.fullmatch(r"vbd listening on 127\.0\.0\.1:(\d+)\n", line)
    if match is None:
        process.kill()
        process.wait()
        raise AssertionError(f"vbd did not announce its port; first line: {line!r}")
    return process, int(match.group(1))


def random_float32s(rng, count):
    """Random values already rounded to float32, so Python and vbd see the same numbers."""
    raw = struct.pack(f"<{count}f", *(rng.uniform(-1.0, 1.0) for _ in range(count)))
    return list(struct.unpack(f"<{count}f", raw)), raw


def split(data, size=SEND_CHUNK_BYTES):
    return [data[offset:offset + size] for offset in range(0, len(data), size)]


class Client:
    """The contract's conventions, written from compute.proto's comments alone."""

    def __init__(self, channel):
        from vb.v1 import compute_pb2, compute_pb2_grpc
        self.pb = compute_pb2
        self.stub = compute_pb2_grpc.ComputeStub(channel)

    def spec(self, shape):
        return self.pb.TensorSpec(dtype=self.pb.DTYPE_FLOAT32, shape=shape)

    def upload(self, data):
        digest = hashlib.sha256(data).hexdigest()
        header = self.pb.UploadHeader(digest=digest, byte_size=len(data))
        requests = [self.pb.UploadWeightRequest(header=header)]
        requests += [self.pb.UploadWeightRequest(data=piece) for piece in split(data)]
        return digest, self.stub.UploadWeight(iter(requests), timeout=RPC_TIMEOUT_S)

    def linear_forward(self, input_shape, input_bytes, weight_digest, weight_shape,
                       bias_shape=None, bias_bytes=None):
        """Returns (output shape, output floats, number of response chunks)."""
        header = self.pb.LinearForwardHeader(
            input=self.spec(input_shape),
            weight=self.pb.WeightRef(digest=weight_digest, spec=self.spec(weight_shape)))
        if bias_shape is not None:
            header.bias.CopyFrom(self.spec(bias_shape))
        requests = [self.pb.LinearForwardRequest(header=header)]
        for index, data in enumerate([input_bytes] + ([bias_bytes] if bias_shape else [])):
            requests += [self.pb.LinearForwardRequest(
                chunk=self.pb.TensorChunk(tensor_index=index, data=piece))
                for piece in split(data)]
        responses = iter(self.stub.LinearForward(iter(requests), timeout=RPC_TIMEOUT_S))
        first = next(responses)
        assert first.WhichOneof("part") == "header", "the response must open with a header"
        names = [named.name for named in first.header.tensors]
        assert names == ["output"], f"forward outputs {names}, expected ['output']"
        output_spec = first.header.tensors[0].spec
        assert output_spec.dtype == self.pb.DTYPE_FLOAT32
        received, chunk_count = bytearray(), 0
        for message in responses:
            assert message.WhichOneof("part") == "chunk" and message.chunk.tensor_index == 0
            received += message.chunk.data
            chunk_count += 1
        count = math.prod(output_spec.shape)
        assert len(received) == 4 * count, f"{len(received)} output bytes for {count} floats"
        return list(output_spec.shape), struct.unpack(f"<{count}f", received), chunk_count


def check_linear(client, rng, batch, in_features, out_features, label):
    """Uploads a random weight, runs a forward with bias and checks every output value."""
    weight, weight_bytes = random_float32s(rng, out_features * in_features)
    inputs, input_bytes = random_float32s(rng, batch * in_features)
    bias, bias_bytes = random_float32s(rng, out_features)
    digest, _ = client.upload(weight_bytes)
    shape, output, chunks = client.linear_forward(
        [batch, in_features], input_bytes, digest, [out_features, in_features],
        [out_features], bias_bytes)
    check(shape == [batch, out_features], f"{label}: output shape {shape}")
    worst = 0.0
    for i in range(batch):
        row = inputs[i * in_features:(i + 1) * in_features]
        for j in range(out_features):
            terms = [x * w for x, w in zip(row, weight[j * in_features:(j + 1) * in_features])]
            expected = math.fsum(terms) + bias[j]
            # float32 rounding grows with the size of the terms, not of their (possibly
            # cancelling) sum, so the tolerance is relative to the sum of magnitudes.
            scale = math.fsum(abs(t) for t in terms) + abs(bias[j])
            error = abs(output[i * out_features + j] - expected)
            assert error <= 1e-5 * scale, (
                f"{label}: y[{i}][{j}] = {output[i * out_features + j]}, expected {expected}")
            worst = max(worst, error / scale)
    check(True, f"{label}: y = x @ w^T + b matches Python arithmetic "
                f"(worst relative error {worst:.1e}, {chunks} response chunk(s))")
    return chunks


def check_status(call, code, what, message_part=None):
    import grpc
    try:
        call()
    except grpc.RpcError as error:
        check(error.code() == code, f"{what}: status {error.code().name}")
        if message_part is not None:
            check(message_part in error.details(), f"{what}: details {error.details()!r}")
        return
    raise AssertionError(f"{what}: the call succeeded; expected {code.name}")


def check_standard_services(channel):
    """grpc.health.v1 and server reflection, spoken in hand-encoded protobuf.

    Debian ships neither service's .proto for Python, and a generic client (grpcurl,
    grpc_cli, a load balancer's health probe) knows them only by their wire format, so the
    bytes are written out here: HealthCheckRequest{} is empty and the answer
    HealthCheckResponse{status: SERVING} is field 1 = 1; ServerReflectionRequest{
    list_services: ""} is field 7, an empty string.
    """
    identity = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    check_health = channel.unary_unary("/grpc.health.v1.Health/Check", **identity)
    check(check_health(b"", timeout=RPC_TIMEOUT_S) == b"\x08\x01", "health: SERVING")
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **identity)
    answer = b"".join(reflect(iter([b"\x3a\x00"]), timeout=RPC_TIMEOUT_S))
    check(b"vb.v1.Compute" in answer, "reflection lists vb.v1.Compute")


def run_checks(port):
    import grpc
    rng = random.Random(20240601)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        client = Client(channel)
        pb = client.pb

        info = client.stub.GetInfo(pb.GetInfoRequest(), timeout=RPC_TIMEOUT_S)
        check(info.version != "", f"GetInfo: version {info.version!r}")
        check(len(info.devices) >= 1, f"GetInfo: devices {[d.kind for d in info.devices]}")
        check(pb.DTYPE_FLOAT32 in info.dtypes, "GetInfo: DTYPE_FLOAT32 supported")

        # 700x300 float32 is 820 KiB: about 205 upload messages of 4 KiB.
        weight, weight_bytes = random_float32s(rng, 700 * 300)
        digest, first = client.upload(weight_bytes)
        check(first.digest == digest and first.byte_size == len(weight_bytes)
              and not first.already_present, f"upload: stored {digest[:12]}... as new")
        _, second = client.upload(weight_bytes)
        check(second.digest == digest and second.already_present,
              "upload of the same bytes again: already_present")
        unknown = hashlib.sha256(rng.randbytes(64)).hexdigest()
        query = client.stub.QueryWeights(pb.QueryWeightsRequest(digests=[digest, unknown]),
                                         timeout=RPC_TIMEOUT_S)
        check(list(query.present) == [True, False], "QueryWeights: uploaded yes, random no")

        check_standard_services(channel)
        check_linear(client, rng, 3, 5, 4, "linear 3x5 -> 4")
        check_linear(client, rng, 4, 300, 700, "linear 4x300 -> 700")
        # 160x2048 float32 outputs are 1.25 MiB, more than one of the daemon's 1 MiB chunks.
        chunks = check_linear(client, rng, 160, 8, 2048, "linear 160x8 -> 2048")
        check(chunks >= 2, f"a large output arrives in {chunks} chunks and reassembles")

        _, input_bytes = random_float32s(rng, 4 * 300)
        check_status(lambda: client.linear_forward([4, 300], input_bytes, unknown, [700, 300]),
                     grpc.StatusCode.NOT_FOUND, "LinearForward with an unknown digest")
        _, wrong_bytes = random_float32s(rng, 4 * 299)
        check_status(lambda: client.linear_forward([4, 299], wrong_bytes, digest, [700, 300]),
                     grpc.StatusCode.INVALID_ARGUMENT, "LinearForward with input [4, 299]",
                     "shape mismatch")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vbd", required=True, help="path to the vbd binary")
    parser.add_argument("--proto-dir", required=True, help="folder holding vb/v1/compute.proto")
    parser.add_argument("--work-dir", help="where to generate the Python stubs (default: temp)")
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="vbd-interop-")
    generate_python_stubs(args.proto_dir, work_dir)

    process, port = start_daemon(args.vbd)
    try:
        run_checks(port)
        # A clean stop is part of the contract: SIGTERM drains and exits 0.
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        check(code == 0, f"vbd exits {code} after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print("interop test passed", flush=True)


if __name__ == "__main__":
    main()
