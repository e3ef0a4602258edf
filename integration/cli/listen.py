"""``pacs-vlm listen``: the DICOM listener process (and the HL7 order listener when ``mllp_port`` is set)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from integration.cli import console, fail, load_settings


def listen(
    port: Annotated[int | None, typer.Option(help="TCP port (overrides PACSVLM_LISTEN_PORT).")] = None,
    ae_title: Annotated[str | None, typer.Option(help="Our AE title (overrides PACSVLM_AE_TITLE).")] = None,
    tls_port: Annotated[
        int | None, typer.Option(help="DICOM TLS port beside the plain one (overrides PACSVLM_TLS_PORT).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level of pacs-vlm's own messages.")] = "INFO",
) -> None:
    """Run the DICOM listener (C-ECHO, C-STORE), study assembly, the prior fetcher and the purge loop until stopped.

    The purge loop (with PACSVLM_RETENTION set) purges the eligible studies read longest ago when free space
    falls below PACSVLM_PURGE_FREE_BYTES, and runs the policy purge every PACSVLM_PURGE_INTERVAL_MINUTES.

    DICOM TLS is served when PACSVLM_TLS_CERTIFICATE and PACSVLM_TLS_PRIVATE_KEY are set: on the listen
    port only, or on PACSVLM_TLS_PORT beside plain TCP on the listen port.  With PACSVLM_MLLP_PORT set, HL7
    orders (ORM^O01, OMI^O23) are taken over MLLP on that port too (TLS with PACSVLM_MLLP_TLS_*).
    """
    from integration.dicom.listener import Listener, ListenerConfigError
    from integration.disk_pressure import PurgeLoop
    from integration.logs import configure_logging
    from integration.orders.mllp import OrderListener, OrderListenerConfigError
    from integration.priors.fetcher import PriorFetcher
    from integration.store.migrate import SchemaOutOfDate, ensure_schema
    from integration.web.ops.purge_totals import counter_reader

    configure_logging(log_level)
    settings = load_settings(listen_port=port, ae_title=ae_title, tls_port=tls_port)
    try:
        ensure_schema(settings.database_url)
        listener = Listener(settings)
        # Prefetch: a study's first stored instance wakes the fetcher, which queries the archives at once.
        fetcher = PriorFetcher.attach(settings, listener.intake, listener.assembler)
        # Disk pressure: a write that would leave too little free purges an eligible study before refusing.
        purger = PurgeLoop(settings, listener.store.space, counter_reader(settings))
        listener.store.relieve = purger.relieve
        orders = OrderListener(settings) if settings.mllp_port is not None else None
        listener.start()
    except (ListenerConfigError, OrderListenerConfigError, SchemaOutOfDate) as exc:
        raise fail(str(exc), 2) from None
    except OSError as exc:
        ports = ", ".join(str(p) for p in (settings.listen_port, settings.tls_port) if p is not None)
        raise fail(f"cannot listen on {settings.listen_host} port {ports}: {exc.strerror or exc}") from None
    if orders is not None:
        try:
            orders.start()
        except OSError as exc:
            listener.stop()
            raise fail(
                f"cannot listen for HL7 on {settings.mllp_host}:{settings.mllp_port}: {exc.strerror or exc}"
            ) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if settings.plain_listener:
        console.print(f"listening as [bold]{settings.ae_title}[/bold] on {settings.listen_host}:{listener.port}")
    if listener.tls_port is not None:
        console.print(
            f"listening as [bold]{settings.ae_title}[/bold] on {settings.listen_host}:{listener.tls_port} (TLS)"
        )
    if orders is not None:
        tls = " (TLS)" if orders.tls_context is not None else ""
        console.print(f"listening for HL7 orders on {settings.mllp_host}:{orders.port}{tls}")
    fetcher.start()
    purger.start()
    stop.wait()
    purger.stop()
    fetcher.stop()
    if orders is not None:
        orders.stop()
    listener.stop()
