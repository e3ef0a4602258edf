"""A real OpenAI-compatible model server for the tests, and a recording proxy in front of it.

``transformers serve`` (transformers' own OpenAI-compatible server, extra ``serving``) runs a staged
model directory on the CPU.  :class:`RecordingProxy` is a plain HTTP reverse proxy that forwards every
request unchanged and keeps the exact bytes it forwarded, so a test sees what the server received; it
can also answer the next requests with an error, hold answers back (a server that does not answer), and
make requests wait for each other (to prove they were in flight together).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support.peers import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stage_in_hub_cache(model_dir: Path, cache: Path, repo_id: str) -> None:
    """Lay ``model_dir``'s config out as hub repository ``repo_id`` of a Hugging Face cache (what listing reads)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)


@dataclass
class TransformersServe:
    """``transformers serve [model_dir]`` in a subprocess (CPU, offline).

    With a ``model_dir`` the server is pinned to that model and lists it alone; without one it serves any
    model it is asked for and lists what its hub cache holds (``hub_models``: repository id -> model folder).
    """

    model_dir: Path | None
    work_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    hub_models: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"transformers-serve-{self.port}.log"

    def start(self, timeout: float = 240.0) -> TransformersServe:
        cache = self.work_dir / "hf-cache"  # a hub cache of our own: /v1/models lists nothing from the machine's
        cache.mkdir(parents=True, exist_ok=True)
        for repo_id, folder in self.hub_models.items():
            stage_in_hub_cache(folder, cache, repo_id)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
        env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), TRANSFORMERS_VERBOSITY="warning")
        binary = Path(sys.executable).parent / "transformers"
        pinned = [str(self.model_dir)] if self.model_dir is not None else []
        command = [str(binary), "serve", *pinned, "--device", "cpu", "--dtype", "float32"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.5)
        raise RuntimeError(f"transformers serve did not start within {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None


@dataclass
class Forwarded:
    """One request as the proxy received (and forwarded) it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> dict[str, Any]:
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


class RecordingProxy:
    """An HTTP reverse proxy to ``upstream`` that records what it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[Forwarded] = []
        self.failures: list[tuple[int, dict[str, Any]]] = []  # (status, body) for the next requests
        self.hold = threading.Event()  # set: answers are held back until released
        self.released = threading.Event()
        self.gather: threading.Barrier | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail_next(self, count: int, status: int, message: str = "busy") -> None:
        self.failures.extend([(status, {"error": {"message": message}})] * count)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        record = Forwarded(handler.command, handler.path, dict(handler.headers.items()), body)
        with self._lock:
            self.requests.append(record)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            failure = self.failures.pop(0) if self.failures else None
        try:
            if failure is not None:
                status, payload = failure
                content, headers = json.dumps(payload).encode(), {"content-type": "application/json"}
            else:
                if self.gather is not None:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        self.gather.wait()
                if self.hold.is_set():
                    self.released.wait(120)
                response = httpx.request(
                    handler.command,
                    self.upstream + handler.path,
                    content=body,
                    headers={"content-type": handler.headers.get("Content-Type", "application/json")},
                    timeout=300,
                )
                status, content = response.status_code, response.content
                headers = {"content-type": response.headers.get("content-type", "application/json")}
            record.status = status
            with contextlib.suppress(OSError):
                handler.send_response(status)
                for name, value in headers.items():
                    handler.send_header(name, value)
                handler.send_header("Content-Length", str(len(content)))
                handler.end_headers()
                handler.wfile.write(content)
        finally:
            with self._lock:
                self.in_flight -= 1

    def chat_requests(self) -> list[Forwarded]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
