"""The floor under any pynetdicom storage SCP: our AE and server, a C-STORE handler that stores nothing.

Run by ``bench.ingest`` as the ``pynetdicom-floor`` receiver. It answers every
C-STORE with success without touching disk or database, and appends one byte
per answer to ``--counter`` so the benchmark can check that every instance
arrived. Comparing it with ``ours`` separates the cost of pynetdicom's
network/DIMSE layer from the cost of our durable store.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from pynetdicom import evt

from integration.config import Settings
from integration.dicom.listener import NoDelayServer, build_ae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--calling-ae", required=True, help="the one calling AE allowed")
    parser.add_argument("--counter", type=Path, required=True, help="file that gets one byte per C-STORE")
    args = parser.parse_args()
    settings = Settings(calling_aes={args.calling_ae: {}}, listen_host="127.0.0.1", listen_port=args.port)
    counter = args.counter.open("ab", buffering=0)

    def on_store(event: Any) -> int:
        counter.write(b".")
        return 0

    ae = build_ae(settings)
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
