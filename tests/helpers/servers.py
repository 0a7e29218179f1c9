"""Real servers for tests: Debian's docker-registry on loopback, moto's S3 server (the stand-in for AWS S3),
and a TCP proxy that cuts a stream.

Each binds 127.0.0.1 on a free port and is stopped by the fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    from runtime_min.triton import free_ports

    return free_ports(1)[0]


def require(binary: str) -> str:
    """The binary's path; in CI (which installs it) its absence fails the run instead of skipping."""
    path = shutil.which(binary)
    if path:
        return path
    message = f"{binary} is not installed (apt-get install {'docker-registry' if 'registry' in binary else binary})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def stop_process(process: subprocess.Popen) -> None:
    """TERM, then KILL if it has not gone within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Registry:
    """`access_log`: one line per request in `log` (combined format), for tests that count them."""

    def __init__(self, root: Path, htpasswd: Path | None = None, access_log: bool = False):
        self.port = free_port()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        auth = (f"auth:\n  htpasswd:\n    realm: nimbuild-test\n    path: {htpasswd}\n" if htpasswd else "")
        config = root / "config.yml"
        config.write_text(
            f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth)
        log = open(root / "log", "wb")
        self.process = subprocess.Popen([require("docker-registry"), "serve", str(config)],
                                        stdout=log if access_log else subprocess.DEVNULL, stderr=log)  # access log: stdout
        self._wait()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'log').read_text()[-500:]}")

    def blob_gets(self) -> dict[str, int]:
        """{digest: GET requests answered with its content (200 or 206)}, from the access log."""
        import re

        counts: dict[str, int] = {}
        for digest, status in re.findall(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d{3})',
                                          (self.root / "log").read_text(errors="replace")):
            if status in ("200", "206"):
                counts[digest] = counts.get(digest, 0) + 1
        return counts

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":")[1]
        return self.root / "data" / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        stop_process(self.process)


class S3Server:
    """STAND-IN for AWS S3 (a remote service nothing here reaches): moto's server mode on loopback,
    which boto3 and Triton's AWS SDK both speak to. `env` is what a client needs to reach it."""

    def __init__(self, root: Path):
        import sys

        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "moto.log"
        binary = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"moto_server exited: {self.log.read_text()[-500:]}"
            try:
                httpx.get(self.endpoint, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"moto_server did not start: {self.log.read_text()[-500:]}")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def stop(self) -> None:
        stop_process(self.process)


class CuttingProxy:
    """Forwards TCP to a target; the first connection that moves more than `cut_after` bytes in the
    chosen direction is closed mid-stream, once. Everything else passes untouched."""

    def __init__(self, target_port: int, cut_after: int, direction: str = "download"):
        self.target_port, self.cut_after, self.direction = target_port, cut_after, direction
        self.cuts = 0
        self.port = free_port()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.port))
        self._server.listen(64)
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"closed": False}
            threading.Thread(target=self._pipe, args=(client, upstream, self.direction == "upload", state), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.direction == "download", state), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool, state: dict) -> None:
        moved = 0
        try:
            while chunk := src.recv(65536):
                moved += len(chunk)
                if counted and self.cuts == 0 and moved > self.cut_after:
                    self.cuts += 1
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            if not state["closed"]:
                state["closed"] = True
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

    def stop(self) -> None:
        self._stopped = True
        self._server.close()


class TokenGateway:
    """A bearer-token front for a real registry, as the distribution spec's token flow describes:
    requests without a valid token get 401 naming a token realm; the realm issues a token for the
    scope in exchange for basic credentials; authorised requests are forwarded to the registry."""

    def __init__(self, upstream_port: int, user: str, password: str):
        import base64
        import secrets
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        gateway = self
        self.tokens: set[str] = set()
        self.issued = 0
        self.port = free_port()
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status, headers, body=b""):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith("/token"):
                    if self.headers.get("Authorization") != expected:
                        return self._reply(401, {"Content-Type": "application/json"}, b'{"details":"bad credentials"}')
                    token = secrets.token_hex(16)
                    gateway.tokens.add(token)
                    gateway.issued += 1
                    return self._reply(200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode())
                auth = self.headers.get("Authorization", "")
                if not (auth.startswith("Bearer ") and auth[7:] in gateway.tokens):
                    realm = f"http://127.0.0.1:{gateway.port}/token"
                    return self._reply(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="test-registry"',
                                             "Content-Type": "application/json"}, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host", "content-length")}
                headers["Host"] = f"127.0.0.1:{gateway.port}"  # so the registry's Location headers point here
                r = httpx.request(self.command, f"http://127.0.0.1:{upstream_port}{self.path}", headers=headers,
                                  content=body, timeout=60)
                passed = {k: v for k, v in r.headers.items() if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                self._reply(r.status_code, passed, r.content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        import json

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# Examples per API operation for schemathesis: bounded in `make test`, many more in `make fuzz`
API_EXAMPLES = int(os.environ.get("NIMBUILD_API_EXAMPLES") or 8)


def schemathesis(url: str, precise: bool = True) -> subprocess.CompletedProcess:
    """schemathesis (the CLI users run) against a live runtime's own OpenAPI document: no 500, and
    statuses, content types, headers and bodies as documented. `precise`: also that the request
    schema is exact (what it allows is accepted, what it forbids refused); APIs whose requests
    pydantic reads leniently (1.0 for an int, 0 for false) are left that check. The report is in
    the result."""
    import re

    from helpers.paths import VENV_BIN

    exact = ["--exclude-checks", "positive_data_acceptance,negative_data_rejection"] if not precise else []
    # the same cases every run in `make test` (a seed alone left some generation to chance); make fuzz explores
    repeatable = [] if os.environ.get("NIMBUILD_FUZZ") else ["--generation-deterministic"]
    result = subprocess.run([str(VENV_BIN / "schemathesis"), "run", f"{url}/openapi.json", "--checks", "all", *exact,
                             "--max-examples", str(API_EXAMPLES), "--request-timeout", "60", "--no-color",
                             "--seed", "31", "--suppress-health-check", "all", *repeatable],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated.group(1)) > 0, f"schemathesis generated no test case:\n{result.stdout[-3000:]}"
    print(f"schemathesis on {url}: {generated.group(0)}")  # shown with -rP, and in make fuzz's log
    return result


def assert_api_as_documented(url: str, paths: set[str], precise: bool = True) -> None:
    """The runtime's OpenAPI document lists `paths`, schemathesis finds every answer as it says,
    and the runtime is still ready after the generated requests."""
    document = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert paths <= set(document["paths"]), sorted(document["paths"])
    result = schemathesis(url, precise)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert httpx.get(f"{url}/v1/health/ready", timeout=10).status_code == 200
