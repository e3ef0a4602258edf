"""HTTP peers on real sockets (``http.server`` in a thread, optionally TLS): a recorder and an OAuth2 token endpoint.

:class:`Recorder` keeps every request (method, path, headers, body, the client certificate's subject) and
answers through a function the test gives, so it can play an EHR intake, a FHIR server or a DICOMweb
STOW-RS endpoint.  :class:`TokenEndpoint` is an OAuth2 authorization server for the client-credentials
grant (RFC 6749 4.4): it checks the client's id and secret (HTTP Basic or form fields) and issues numbered
bearer tokens with the ``expires_in`` the test sets.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus


@dataclass(frozen=True)
class Request:
    """One request a peer received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_subject: str = ""


#: (status, headers, body) a peer answers.
Answer = tuple[int, dict[str, str], bytes]


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 whose handler calls ``self.handle(request)``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self._tls = tls
        self._server: ThreadingHTTPServer | None = None

    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Any:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                subject = ""
                if isinstance(self.connection, ssl.SSLSocket):
                    cert = self.connection.getpeercert() or {}
                    subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
                request = Request(self.command, self.path, dict(self.headers.items()), body, subject)
                peer.requests.append(request)
                status, headers, answer = peer.handle(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = _any  # noqa: N815 (http.server's names)

            def log_message(self, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self._tls is not None:
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


class Recorder(_Server):
    """Keeps each request; ``answer(request)`` decides the reply (201 with no body by default)."""

    def __init__(self, answer: Callable[[Request], Answer] | None = None, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(tls)
        self.answer = answer or (lambda request: (201, {}, b""))

    def handle(self, request: Request) -> Answer:
        return self.answer(request)

    def authorizations(self) -> list[str]:
        return [r.headers.get("Authorization", "") for r in self.requests]


@dataclass
class TokenEndpoint(_Server):
    """OAuth2 client-credentials token endpoint for one client."""

    client_id: str = "pacs-vlm"
    client_secret: str = "s3cr3t-client-VALUE"
    expires_in: int | None = 3600
    issued: list[str] = field(default_factory=list)
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        super().__init__(self.tls)

    def handle(self, request: Request) -> Answer:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            client = (unquote_plus(user), unquote_plus(password))
        else:
            client = (form.get("client_id", ""), form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials":
            return self._json(400, {"error": "unsupported_grant_type"})
        if client != (self.client_id, self.client_secret):
            # a careless server echoes what it got: it must still never reach our logs or errors
            return self._json(401, {"error": "invalid_client", "error_description": f"bad secret {client[1]}"})
        token = f"access-{len(self.issued) + 1}-{uuid.uuid4().hex}"
        self.issued.append(token)
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return self._json(200, answer)

    @staticmethod
    def _json(status: int, body: dict[str, object]) -> Answer:
        return status, {"Content-Type": "application/json", "Cache-Control": "no-store"}, json.dumps(body).encode()

    def form(self, index: int) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.requests[index].body.decode()).items()}


def https_context(certificate: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS server context (requiring a client certificate issued by ``client_ca`` when given)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
