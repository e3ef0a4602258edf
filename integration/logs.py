"""Application logging: one format, no patient data (only UIDs of studies in jobs, AE titles, counts)."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger: ``level`` for pacs-vlm's own loggers; libraries log warnings and up."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    for name in ("integration", "worker", "models"):
        logging.getLogger(name).setLevel(level.upper())
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
