"""``pacs-vlm demo``: the whole ingest path on embedded defaults, with no servers to install.

Starts the listener (SQLite, file-system queue, files under ``var/demo``),
sends the bundled sample studies and a generated CT series over DICOM
C-STORE, waits until each study is stable and queued, and prints the result.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from integration.config import CallingAE, Settings
from integration.dicom.listener import Listener
from integration.dicom.samples import write_ct_series, write_sample_studies
from integration.queue import queue_depth
from integration.store.migrate import ensure_schema
from integration.store.queries import study_summaries
from integration.store.session import session_scope

DEMO_AE = "PACSVLM_DEMO"
DEMO_DIR = Path("var/demo")


def demo_settings(data_dir: Path = DEMO_DIR) -> Settings:
    """Return the demo's settings: embedded defaults, a short stable timer, a free port.

    Parameters
    ----------
    data_dir : pathlib.Path
        Folder for the database, files and queue.

    Returns
    -------
    Settings
        The settings.
    """
    return Settings(
        data_dir=data_dir,
        database_url="",
        broker_url="",
        listen_host="127.0.0.1",
        listen_port=_free_port(),
        calling_aes={DEMO_AE: CallingAE(stable_seconds=2)},
        assembly_interval=0.5,
        min_free_bytes=0,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send_files(settings: Settings, files: list[Path], progress: Progress) -> dict[str, int]:
    """Send files over one association with C-STORE, each in its own transfer syntax.

    Parameters
    ----------
    settings : Settings
        Where the listener is.
    files : list of pathlib.Path
        DICOM files.
    progress : rich.progress.Progress
        Progress display.

    Returns
    -------
    dict of str to int
        Count of answers per status name.
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


def run_demo(*, keep: bool = False) -> int:
    """Run the demo and return the process exit status.

    Parameters
    ----------
    keep : bool
        Keep ``var/demo`` from an earlier run instead of starting empty.

    Returns
    -------
    int
        0 when every study was stored, assembled and queued.
    """
    console = Console()
    if not keep:
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
    settings = demo_settings()
    ensure_schema(settings.database_url)
    listener = Listener(settings)
    listener.start()
    console.print(
        f"[bold]pacs-vlm demo[/bold]: listener {settings.ae_title} on 127.0.0.1:{listener.port}, "
        f"data in {DEMO_DIR}/ (SQLite, file-system queue)"
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with tempfile.TemporaryDirectory() as scratch, Progress(*columns, console=console) as progress:
            folder = Path(scratch)
            files = write_sample_studies(folder / "samples") + write_ct_series(folder / "ct", 60)
            study_uids = sorted({str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files})
            outcome = send_files(settings, files, progress)
            waiting = progress.add_task("studies stable and queued", total=len(study_uids))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with session_scope(settings.database_url) as session:
                    rows = study_summaries(session, len(study_uids), study_uids)
                done = sum(1 for row in rows if row.state == "queued")
                progress.update(waiting, completed=done)
                if done == len(study_uids):
                    break
                time.sleep(0.25)
        depth = queue_depth(settings, settings.analysis_queue)
    finally:
        listener.stop()
    table = Table("study", "state", "version", "series", "instances", "jobs", title="Studies received")
    for row in rows:
        table.add_row(
            f"...{row.study_uid[-24:]}", row.state, str(row.version), str(row.series), str(row.instances), str(row.jobs)
        )
    console.print(table)
    console.print(f"C-STORE answers: {outcome}; messages waiting in queue '{settings.analysis_queue}': {depth}")
    ok = all(row.state == "queued" for row in rows) and len(rows) == len(study_uids) and depth >= len(study_uids)
    console.print("[green]all studies stored, assembled and queued[/green]" if ok else "[red]demo incomplete[/red]")
    return 0 if ok else 1
