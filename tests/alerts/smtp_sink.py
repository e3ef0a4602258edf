"""A real SMTP server process for the alert tests: aiosmtpd, writing each message it accepts to a folder.

Run as ``python tests/alerts/smtp_sink.py HOST PORT FOLDER``: every accepted message becomes
``FOLDER/NNNN.eml`` (the bytes as received) beside ``NNNN.rcpt`` (its recipients), written atomically.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class Sink:
    """An aiosmtpd handler that keeps every message in a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's hook name)
        self.count += 1
        stem = self.folder / f"{self.count:04d}"
        for suffix, data in ((".rcpt", "\n".join(envelope.rcpt_tos).encode()), (".eml", envelope.original_content)):
            partial = stem.with_suffix(suffix + ".part")
            partial.write_bytes(data)
            os.replace(partial, stem.with_suffix(suffix))
        return "250 Message accepted for delivery"


def main() -> None:
    host, port, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    folder.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(folder), hostname=host, port=port)
    controller.start()
    signal.signal(signal.SIGTERM, lambda *_: (controller.stop(), sys.exit(0)))
    signal.pause()


if __name__ == "__main__":
    main()
