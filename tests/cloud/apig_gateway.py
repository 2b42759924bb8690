#!/usr/bin/env python3
"""A stand-in for Huawei Cloud's API gateway in front of a ModelArts real-time service.

It behaves as Huawei documents the gateway: HTTPS; POST /v1/infers/{service_id}/{route} is
forwarded to the service as /{route}; authentication by SDK-HMAC-SHA256 signature (recomputed
here independently of the C++ signer, with X-Sdk-Date skew over 15 minutes rejected), by
AppCode, by IAM token (issued by POST /v3/auth/tokens, X-Subject-Token) or by Bearer API key;
bodies over the limit answered 413 APIG.0201; errors as {"error_code", "error_msg",
"request_id"}. Fault injection for tests: POST /__control (JSON) and GET /__stats, served
without authentication on this loopback-only test server.
"""
import argparse
import datetime
import hashlib
import hmac
import http.client
import json
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def encode(text):
    return "".join(chr(b) if b in UNRESERVED else "%%%02X" % b for b in text.encode("utf-8"))


def canonical_request(method, raw_path, headers, signed_names, body):
    path, _, query = raw_path.partition("?")
    uri = "/".join(encode(segment) for segment in urllib.parse.unquote(path).split("/"))
    if not uri.endswith("/"):
        uri += "/"
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(encode(k) + "=" + encode(v) for k, v in pairs)
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    canonical_headers = "".join("%s:%s\n" % (name, lower.get(name, "")) for name in signed_names)
    return "\n".join([method.upper(), uri, canonical_query, canonical_headers,
                      ";".join(signed_names), hashlib.sha256(body).hexdigest()])


def signature(sk, date, canonical):
    string_to_sign = "SDK-HMAC-SHA256\n%s\n%s" % (
        date, hashlib.sha256(canonical.encode("utf-8")).hexdigest())
    return hmac.new(sk.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class Gateway:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.fail_next = []     # [{"status": 429, "error_code": "APIG.0308"}, ...]
        self.delay_ms = 0       # added before forwarding: a slow backend
        self.tokens = {}        # token -> expiry (time.time())
        self.stats = {"requests": 0, "forwarded": 0, "rejected": {}, "tokens_issued": 0,
                      "max_body_seen": 0}

    def count_rejection(self, code):
        with self.lock:
            self.stats["rejected"][code] = self.stats["rejected"].get(code, 0) + 1


def make_handler(gw):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # Headers and body are separate writes: no Nagle delay between them.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt, *args):  # quiet: the tests read the counters instead
            pass

        def reply(self, status, body, content_type="application/json", headers=None):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, code, message):
            gw.count_rejection(code)
            self.reply(status, {"error_code": code, "error_msg": message,
                                "request_id": secrets.token_hex(16)})

        def read_body(self):
            length = int(self.headers.get("Content-Length", "0"))
            return self.rfile.read(length) if length else b""

        def do_GET(self):
            if self.path == "/__stats":
                with gw.lock:
                    return self.reply(200, gw.stats)
            self.handle_call(b"")

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            if length > gw.args.max_body:
                # Drain what the client sends, then refuse, as the gateway does.
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                with gw.lock:
                    gw.stats["requests"] += 1
                return self.error(413, "APIG.0201", "Request entity too large")
            body = self.read_body()
            if self.path == "/__control":
                control = json.loads(body or b"{}")
                with gw.lock:
                    gw.fail_next.extend(control.get("fail_next", []))
                    gw.delay_ms = control.get("delay_ms", gw.delay_ms)
                    if control.get("expire_tokens"):
                        gw.tokens = {t: 0 for t in gw.tokens}
                    if control.get("reset_stats"):
                        gw.stats = {"requests": 0, "forwarded": 0, "rejected": {},
                                    "tokens_issued": gw.stats["tokens_issued"],
                                    "max_body_seen": 0}
                return self.reply(200, {"ok": True})
            if self.path == "/v3/auth/tokens":
                return self.issue_token(body)
            self.handle_call(body)

        def issue_token(self, body):
            try:
                auth = json.loads(body)["auth"]
                user = auth["identity"]["password"]["user"]
                ok = (user["name"] == gw.args.user and user["password"] == gw.args.password
                      and user["domain"]["name"] == gw.args.domain
                      and auth["scope"]["project"]["name"] == gw.args.project)
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                return self.error(401, "IAM.0001", "The username or password is wrong.")
            token = "MII" + secrets.token_urlsafe(48)
            with gw.lock:
                gw.tokens[token] = time.time() + 24 * 3600
                gw.stats["tokens_issued"] += 1
            self.reply(201, {"token": {"expires_at": "later"}}, headers={"X-Subject-Token": token})

        def authenticate(self, body):
            mode = gw.args.auth
            if mode == "none":
                return True
            if mode == "app_code":
                if self.headers.get("X-Apig-AppCode") != gw.args.app_code:
                    self.error(401, "APIG.0301", "Incorrect app authentication information: "
                               "AppCode not found")
                    return False
                return True
            if mode == "api_key":
                if self.headers.get("Authorization") != "Bearer " + gw.args.api_key:
                    self.error(401, "APIG.0301", "Incorrect IAM authentication information")
                    return False
                return True
            if mode == "token":
                token = self.headers.get("X-Auth-Token", "")
                with gw.lock:
                    expiry = gw.tokens.get(token)
                if expiry is None:
                    self.error(401, "APIG.0301", "Incorrect IAM authentication information: "
                               "token verification failed")
                    return False
                if expiry < time.time():
                    self.error(401, "APIG.0307", "The token must be updated.")
                    return False
                return True
            # aksk
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("SDK-HMAC-SHA256 "):
                self.error(401, "APIG.0303", "Incorrect app authentication information: "
                           "no SDK-HMAC-SHA256 authorization")
                return False
            fields = dict(part.strip().split("=", 1) for part in auth[16:].split(","))
            date = self.headers.get("X-Sdk-Date", "")
            try:
                signed_at = datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(
                    tzinfo=datetime.timezone.utc)
            except ValueError:
                self.error(401, "APIG.0303", "Incorrect app authentication information: "
                           "bad X-Sdk-Date")
                return False
            skew = abs((datetime.datetime.now(datetime.timezone.utc) - signed_at).total_seconds())
            if skew > 15 * 60:
                self.error(401, "APIG.0303", "Incorrect app authentication information: "
                           "signature expired (X-Sdk-Date off by %d s)" % skew)
                return False
            if fields.get("Access") != gw.args.ak:
                self.error(401, "APIG.0303", "Incorrect app authentication information: "
                           "unknown access key")
                return False
            names = fields.get("SignedHeaders", "").split(";")
            canonical = canonical_request(self.command, self.path, dict(self.headers), names, body)
            expected = signature(gw.args.sk, date, canonical)
            if not hmac.compare_digest(expected, fields.get("Signature", "")):
                self.error(401, "APIG.0303", "Incorrect app authentication information: "
                           "verify aksk signature fail")
                return False
            return True

        def handle_call(self, body):
            with gw.lock:
                gw.stats["requests"] += 1
                gw.stats["max_body_seen"] = max(gw.stats["max_body_seen"], len(body))
            prefix = "/v1/infers/%s/" % gw.args.service_id
            if not self.path.startswith(prefix):
                return self.error(404, "APIG.0101", "The API does not exist or has not been "
                                  "published in the environment")
            if not self.authenticate(body):
                return
            with gw.lock:
                injected = gw.fail_next.pop(0) if gw.fail_next else None
                delay = gw.delay_ms
            if injected is not None:
                return self.error(injected["status"], injected.get("error_code", "APIG.0308"),
                                  injected.get("error_msg", "injected failure"))
            if delay:
                time.sleep(delay / 1000.0)
            route = "/" + self.path[len(prefix):]
            conn = http.client.HTTPConnection(gw.args.backend_host, gw.args.backend_port,
                                              timeout=gw.args.backend_timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            try:
                conn.request(self.command, route, body=body if self.command == "POST" else None,
                             headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            except TimeoutError:
                return self.error(504, "APIG.0201", "Backend timeout.")
            except OSError as error:
                return self.error(502, "APIG.0201", "Backend unavailable: %s" % error)
            finally:
                conn.close()
            with gw.lock:
                gw.stats["forwarded"] += 1
            self.reply(answer.status, data, answer.getheader("Content-Type", "application/json"))

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--backend", required=True, help="host:port of vbd's HTTP face")
    parser.add_argument("--service-id", default="5f6e8b4c-test-service")
    parser.add_argument("--auth", default="aksk",
                        choices=["none", "aksk", "app_code", "token", "api_key"])
    parser.add_argument("--ak", default="")
    parser.add_argument("--sk", default="")
    parser.add_argument("--app-code", default="")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--domain", default="")
    parser.add_argument("--project", default="")
    parser.add_argument("--max-body", type=int, default=12 * 1000 * 1000)
    parser.add_argument("--backend-timeout", type=float, default=40.0)
    args = parser.parse_args()
    args.backend_host, _, port = args.backend.rpartition(":")
    args.backend_port = int(port)

    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Gateway(args)))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("gateway listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
