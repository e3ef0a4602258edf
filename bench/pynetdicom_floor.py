"""A pynetdicom storage SCP whose C-STORE handler stores nothing: the floor of a pynetdicom-based listener.

Run by ``bench.ingest`` as the ``pynetdicom-floor`` receiver. It answers every
C-STORE with success without touching disk or database, and appends one byte
per answer to ``--counter`` so the benchmark can check that every instance
arrived. Comparing it with ``ours`` separates the cost of pynetdicom's
network/DIMSE layer from the cost of our durable store.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, VerificationPresentationContexts, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from integration.dicom.listener import acceptor_contexts


class NoDelayServer(ThreadedAssociationServer):
    """Association server that disables Nagle on every accepted socket."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection and set TCP_NODELAY (C-STORE responses are small)."""
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def build_ae(calling_ae: str) -> AE:
    """Build a pynetdicom AE with our contexts and limits (the listener before it moved to asyncio)."""
    _config.LOG_HANDLER_LEVEL = "none"  # per-PDU debug formatting costs more than the store itself
    ae = AE(ae_title="PACSVLM")
    ae.require_called_aet = True
    ae.require_calling_aet = [calling_ae]
    ae.maximum_pdu_size = 131_072
    ae.supported_contexts = [*acceptor_contexts()[:-1], *VerificationPresentationContexts]
    return ae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--calling-ae", required=True, help="the one calling AE allowed")
    parser.add_argument("--counter", type=Path, required=True, help="file that gets one byte per C-STORE")
    args = parser.parse_args()
    counter = args.counter.open("ab", buffering=0)

    def on_store(event: Any) -> int:
        counter.write(b".")
        return 0

    ae = build_ae(args.calling_ae)
    server = ae.make_server(
        ("127.0.0.1", args.port), evt_handlers=[(evt.EVT_C_STORE, on_store)], server_class=NoDelayServer
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
