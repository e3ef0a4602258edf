"""The ``api`` command: the review API process (``/health`` and ``/metrics`` for now) under uvicorn.

The root command line (:mod:`worker.cli`) mounts it.
"""

from __future__ import annotations

import socket
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from integration.cli import console, fail, load_settings


class LogLevel(StrEnum):
    """Log levels of the API process (pacs-vlm's own messages and uvicorn's)."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """Bind a TCP socket (IPv4, IPv6 or a name) for uvicorn to listen on, so a taken port is a readable error first.

    Raises
    ------
    OSError
        The address cannot be bound (in use, not ours, unknown name).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def api(
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for every interface, as in docker-compose).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="Log level of pacs-vlm's and uvicorn's messages.")
    ] = LogLevel.INFO,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS (TLS 1.2+) instead of HTTP.")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="Unencrypted PEM private key of --ssl-certfile.")] = None,
    proxy_headers: Annotated[
        bool, typer.Option(help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips (a reverse proxy).")
    ] = True,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated addresses of the reverse proxy whose X-Forwarded-* headers are trusted "
            "('*' trusts all; default: PACSVLM_FORWARDED_ALLOW_IPS, else no proxy is trusted)."
        ),
    ] = None,
) -> None:
    """Run the review API and page, STOW-RS, /health and /metrics, over HTTP or HTTPS.

    Behind a TLS-terminating reverse proxy, keep the default HTTP and list the proxy in
    --forwarded-allow-ips (or PACSVLM_FORWARDED_ALLOW_IPS) so the client's address and scheme (secure
    session cookie) are known; no proxy is trusted otherwise.
    """
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from integration.logs import configure_logging
    from integration.store.migrate import SchemaOutOfDate, ensure_schema
    from integration.web.app import create_app
    from integration.web.ops.health import describe_error

    configure_logging(log_level.value)
    settings = load_settings()
    try:
        ensure_schema(settings.database_url)
    except SchemaOutOfDate as exc:
        raise fail(str(exc), 2) from None
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {describe_error(exc)}", 2) from None
    try:
        settings.instance_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot create the instance store {settings.instance_root}: {exc.strerror or exc}", 2) from None
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("HTTPS needs both --ssl-certfile and --ssl-keyfile", 2)
    tls: ssl.SSLContext | None = None
    if ssl_certfile is not None and ssl_keyfile is not None:
        from integration.dicom.tls import TlsConfigError, server_context

        try:
            tls = server_context(ssl_certfile, ssl_keyfile)
            tls.set_alpn_protocols(["http/1.1"])
        except TlsConfigError as exc:
            raise fail(f"HTTPS: {exc}", 2) from None
    try:
        sock = bind_listening_socket(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2) from None
    trusted_proxies = (forwarded_allow_ips if forwarded_allow_ips is not None else settings.forwarded_allow_ips).strip()
    if trusted_proxies != settings.forwarded_allow_ips:
        settings = settings.model_copy(update={"forwarded_allow_ips": trusted_proxies})
    config = uvicorn.Config(
        create_app(settings),
        log_level=log_level.value,
        server_header=False,
        # no trusted proxy (the default): the client is the TCP peer, whatever X-Forwarded-For says
        proxy_headers=proxy_headers and bool(trusted_proxies),
        forwarded_allow_ips=trusted_proxies or None,
        # uvicorn calls the factory when it loads; the context was built (and its files checked) above
        ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
    )
    server = uvicorn.Server(config)
    scheme = "https" if tls is not None else "http"
    console.print(f"review API on {scheme}://{host}:{port} (/health, /metrics)")
    server.run(sockets=[sock])
    if not server.started:
        raise fail("the API server did not start (see the messages above)")
