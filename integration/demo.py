"""The ingest half of ``pacs-vlm demo`` (run by :mod:`worker.demo`): embedded settings and a C-STORE sender.

The demo runs the listener on embedded defaults (SQLite, file-system queue,
files under ``var/demo``) and sends the bundled sample studies and a generated
CT series over DICOM C-STORE with :func:`send_files`.

Its studies belong to a demo site and the demo adds a radiologist of that site
(:func:`ensure_demo_reader`), so the drafts can be reviewed and signed in the browser as
a radiologist would: a radiologist sees only their site's studies, and only radiologists sign.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from rich.progress import Progress

from integration.config import CallingAE, Settings

DEMO_AE = "PACSVLM_DEMO"
DEMO_DIR = Path("var/demo")
#: The demo's site and its radiologist.
DEMO_SITE = "DEMO"
DEMO_SITE_NAME = "Demo Hospital"
DEMO_READER = "demo_rad"
DEMO_READER_NAME = "Demo^Reader"


def demo_settings(data_dir: Path = DEMO_DIR) -> Settings:
    """Return the demo's settings: embedded defaults in ``data_dir``, a short stable timer, a free port."""
    return Settings(
        data_dir=data_dir,
        database_url="",
        broker_url="",
        listen_host="127.0.0.1",
        listen_port=_free_port(),
        calling_aes={DEMO_AE: CallingAE(stable_seconds=2, site=DEMO_SITE)},
        assembly_interval=0.5,
        min_free_bytes=0,
    )


def ensure_demo_reader(settings: Settings) -> str | None:
    """Add the demo's site and its radiologist when they are missing (the database is migrated already).

    Returns the radiologist's new password (random, shown once by the demo), or None when the user existed.
    """
    from sqlalchemy import select

    from integration.store.session import session_scope
    from integration.store.tables import Site, User, UserRole
    from integration.store.users import create_site, create_user

    with session_scope(settings.database_url) as session:
        if session.scalar(select(Site.id).where(Site.code == DEMO_SITE)) is None:
            create_site(session, DEMO_SITE, DEMO_SITE_NAME)
        if session.scalar(select(User.id).where(User.username == DEMO_READER)) is not None:
            return None
        password = secrets.token_urlsafe(12)
        create_user(session, DEMO_READER, password, UserRole.RADIOLOGIST, DEMO_SITE, person_name=DEMO_READER_NAME)
    return password


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send_files(settings: Settings, files: list[Path], progress: Progress) -> dict[str, int]:
    """Send files over one association with C-STORE, each in its own transfer syntax; count answers per status name.

    Raises
    ------
    RuntimeError
        When the listener refuses the association.
    """
    ae = AE(ae_title=DEMO_AE)
    pairs = set()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        pairs.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", settings.listen_port, ae_title=settings.ae_title)
    if not assoc.is_established:
        raise RuntimeError("the listener refused the demo's association")
    outcome: dict[str, int] = {}
    task = progress.add_task("C-STORE to the listener", total=len(files))
    try:
        for path in files:
            answer = assoc.send_c_store(path)
            code = int(answer.Status) if "Status" in answer else -1
            key = "success" if code == 0 else f"status 0x{code:04X}" if code >= 0 else "no answer"
            outcome[key] = outcome.get(key, 0) + 1
            progress.advance(task)
    finally:
        assoc.release()
    return outcome
