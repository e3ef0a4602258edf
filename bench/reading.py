"""Reading benchmark: a radiologist signs a worklist of normal studies with the keyboard alone.

A radiologist who reads sixty studies a day spends their time on the pages between the images: opening the
next study, marking the findings, attesting, signing.  ``python -m bench.reading`` measures that page time.
It starts a ``pacs-vlm api`` process on a fresh PostgreSQL database (Redis for the broker, as ``bench.load``
does), stores ``--studies`` normal CT studies (default 20) the way the listener's intake does, completes them
with the assembly pass and records a draft for each as the worker records them (two normal findings, the
smoke model's name), then drives headless Chromium (``/usr/bin/chromium``, through Playwright) as the
radiologist, keys only, no clicks:

``o`` on the worklist opens the first study to read; on each study ``a`` accepts the first finding (the page
reloads at it), ``j`` moves to the second, ``x`` attests that it was read as written, and ``Shift+S`` signs and
opens the next study of the list, until the worklist says there is none left.

A study's page time runs from its first keystroke to the load of the page that follows its signature (the
next study, or the worklist): the page work only, no thinking time and no model.  The benchmark checks that
every study was visited once and ends signed.  It prints a table and, last::

    reading seconds_per_study=<median>

The goal is under 2 s.  :func:`read_worklist` is also what ``tests/web/test_reading_keyboard.py`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.ingest import ManagedProcess, free_port, port_open, wait_until
from bench.load import Deployment
from bench.processes import BenchError, console, progress_console

#: The browser (Debian package chromium).
CHROMIUM = "/usr/bin/chromium"
#: The benchmark's own Redis database (flushed before and after).
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/6"
SITE = "READING"
READER = ("reader", "reading is not a password 1")
CALLING_AE = "READ1"
FINDINGS = ("Normal appearance of the imaged structures.", "No focal abnormality is seen.")
#: Longest wait for one page (seconds).
PAGE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class StudyRead:
    """One study as the radiologist read it: its place in the list, its UID, the keys pressed, its page time."""

    rank: int
    study_uid: str
    keys: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class Reading:
    """The run: the studies drafted (in the order stored), those read (in reading order), the last page."""

    drafted: tuple[str, ...]
    read: tuple[StudyRead, ...]
    final_url: str
    final_notice: str

    @property
    def median(self) -> float:
        """Median page seconds per study."""
        return statistics.median(study.seconds for study in self.read)


def store_studies(database_url: str, data_dir: Path, count: int) -> list[str]:
    """Store ``count`` normal CT studies of the reading site as the listener does, each with a primary draft.

    Parameters
    ----------
    database_url : str
        A migrated database (the site and the reader are added).
    data_dir : pathlib.Path
        The deployment's data folder (its instance store).
    count : int
        How many studies.

    Returns
    -------
    list of str
        The study UIDs, in the order stored.

    Raises
    ------
    BenchError
        A study was not stored or not completed.
    """
    import pydicom
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from integration.config import Settings
    from integration.intake.assembly import StudyAssembler
    from integration.intake.intake import intake_for
    from integration.intake.outcome import Origin
    from integration.samples import pydicom_test_file
    from integration.store.reports import DraftRecord, record_draft
    from integration.store.session import session_scope
    from integration.store.tables import AnalysisJob, Study, UserRole, utcnow
    from integration.store.users import create_site, create_user

    settings = Settings(database_url=database_url, data_dir=data_dir, fsync=False, min_free_bytes=0)
    with session_scope(database_url) as session:
        site = create_site(session, SITE, "Reading benchmark")
        create_user(session, READER[0], READER[1], UserRole.RADIOLOGIST, SITE, person_name="Reader^Rita")
        site_id = site.id
    origin = Origin(calling_ae=CALLING_AE, source="dicom", site_id=site_id, stable_seconds=0.0)
    sample = pydicom_test_file("CT_small.dcm")
    uids: list[str] = []
    evidence: dict[str, dict[str, Any]] = {}
    for number in range(count):
        ds = pydicom.dcmread(sample)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = f"Reading^Patient{number:02d}", f"READ-{number:04d}"
        ds.AccessionNumber = f"RD{number:05d}"
        path = data_dir / "samples" / f"{number}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        if not intake_for(settings).store_part10(path.read_bytes(), origin).succeeded:
            raise BenchError(f"study {number} was not stored")
        uids.append(str(ds.StudyInstanceUID))
        evidence[uids[-1]] = {
            "image": 1,
            "sop_class_uid": str(ds.SOPClassUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "series_uid": str(ds.SeriesInstanceUID),
            "frame": 1,
            "window": None,
        }
    if StudyAssembler(settings).run_once().jobs_created != count:
        raise BenchError("the assembly pass did not complete every study")
    document = {
        "findings": [{"text": text, "images": [1]} for text in FINDINGS],
        "impression": "Normal study.",
        "limitations": "",
        "structured": True,
        "problems": [],
    }
    received = utcnow() - timedelta(minutes=count)
    with session_scope(database_url) as session:
        for number, uid in enumerate(uids):
            study = session.scalars(select(Study).where(Study.study_uid == uid)).one()
            study.last_received_at = received + timedelta(minutes=number)  # a fixed worklist order: newest first
            job_id = session.scalars(
                select(AnalysisJob.id).where(AnalysisJob.study_id == study.id).order_by(AnalysisJob.id.desc())
            ).first()
            if job_id is None:
                raise BenchError(f"study {number} has no job")
            draft = DraftRecord(
                model_id="smoke/llava-tiny",
                model_revision="smoke",
                model_family="llava",
                prompt_version="ct/v1",
                structured=True,
                findings=document,
                text="Normal study.",
                raw_output="{}",
                evidence=[evidence[uid]],
                timings={"total": 0.1},
                tokens_in=10,
                tokens_out=20,
            )
            record_draft(session, job_id, draft, utcnow())
    return uids


def _uid_of(url: str) -> str:
    path = url.split("?", 1)[0].split("#", 1)[0]
    return path.rsplit("/studies/", 1)[1] if "/studies/" in path else ""


def drive(page: Any, base_url: str, limit: int) -> tuple[list[StudyRead], str, str]:
    """Sign in, then read the worklist with the keyboard alone until it has no study left to read.

    Parameters
    ----------
    page : playwright.sync_api.Page
        A fresh page of a browser context.
    base_url : str
        The api.
    limit : int
        Most studies to read (a guard against a list that never ends).

    Returns
    -------
    tuple
        The studies read, the last page's URL and its notice.

    Raises
    ------
    BenchError
        The sign-in failed or a page did not come.
    """
    page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    page.goto(base_url + "/login")
    page.fill("#username", READER[0])
    page.fill("#password", READER[1])
    with page.expect_navigation():
        page.press("#password", "Enter")
    if not page.url.endswith("/worklist"):
        raise BenchError(f"sign-in did not reach the worklist: {page.url}")
    with page.expect_navigation():
        page.keyboard.press("o")
    read: list[StudyRead] = []
    while "/studies/" in page.url and len(read) < limit:
        uid = _uid_of(page.url)
        keys = ("a", "j", "x", "Shift+S")
        start = time.perf_counter()
        with page.expect_navigation():
            page.keyboard.press("a")  # accept the first finding (focused on load); the page reloads at it
        page.keyboard.press("j")  # the second finding
        page.keyboard.press("x")  # attest it was read as written
        with page.expect_navigation():
            page.keyboard.press("Shift+S")  # sign, and open the next study to read
        read.append(StudyRead(len(read) + 1, uid, keys, time.perf_counter() - start))
    notice = page.locator("#no-more-studies")
    text = notice.inner_text() if notice.count() and notice.is_visible() else ""
    return read, page.url, text


def read_worklist(database_url: str, broker_url: str, workdir: Path, studies: int, chromium: str = CHROMIUM) -> Reading:
    """Run the whole benchmark on a migrated database: api, studies with drafts, the keyboard reading.

    Parameters
    ----------
    database_url : str
        A migrated, empty database.
    broker_url : str
        A Redis database of its own (flushed).
    workdir : pathlib.Path
        Folder for data and logs.
    studies : int
        How many normal studies to store and read.
    chromium : str
        The browser binary.

    Returns
    -------
    Reading
        What was drafted and read.

    Raises
    ------
    BenchError
        The api did not start, or the reading went wrong.
    """
    from playwright.sync_api import sync_playwright

    with Deployment(workdir, broker_url, database_url) as deploy:
        drafted = store_studies(deploy.database_url, deploy.data_dir, studies)
        port = free_port()
        api = ManagedProcess(
            "pacs-vlm api",
            [sys.executable, "-m", "worker.cli", "api", "--port", str(port)],
            deploy.env({}),
            workdir / "api.log",
            cwd=deploy.repo,
        )
        api.start()
        deploy.processes.append(api)
        wait_until(lambda: port_open(port), "open HTTP port", api)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                read, final_url, notice = drive(context.new_page(), f"http://127.0.0.1:{port}", studies + 5)
            finally:
                browser.close()
    return Reading(tuple(drafted), tuple(read), final_url, notice)


def signed_studies(database_url: str, study_uids: Sequence[str]) -> dict[str, int]:
    """Return, for each of these studies, how many signed reports it has."""
    from sqlalchemy import func, select

    from integration.store.session import session_scope
    from integration.store.tables import Report, ReportStatus, Study

    with session_scope(database_url) as session:
        rows = session.execute(
            select(Study.study_uid, func.count(Report.id))
            .outerjoin(Report, (Report.study_id == Study.id) & (Report.status == ReportStatus.SIGNED))
            .where(Study.study_uid.in_(list(study_uids)))
            .group_by(Study.study_uid)
        ).all()
    return {str(uid): int(count) for uid, count in rows}


def results_table(reading: Reading) -> Table:
    """The table: one row per study read, then the median and the slowest."""
    table = Table(title=f"reading: {len(reading.read)} studies signed with the keyboard (page time per study)")
    for column in ("#", "study", "keys", "seconds"):
        table.add_column(column, justify="right" if column in ("#", "seconds") else "left")
    for study in reading.read:
        table.add_row(str(study.rank), "…" + study.study_uid[-12:], " ".join(study.keys), f"{study.seconds:.3f}")
    if reading.read:
        table.add_row("", "median", "", f"{reading.median:.3f}")
        table.add_row("", "slowest", "", f"{max(study.seconds for study in reading.read):.3f}")
    return table


def check(reading: Reading, database_url: str) -> None:
    """Check that every study was read once, in the worklist's order, and ends signed once.

    Raises
    ------
    BenchError
        A study was skipped, read twice or not signed, or the worklist did not say that none is left.
    """
    order = [study.study_uid for study in reading.read]
    if order != list(reversed(reading.drafted)):
        raise BenchError(f"read {len(order)} studies, not the {len(reading.drafted)} drafted in the worklist's order")
    unsigned = [uid for uid, count in signed_studies(database_url, reading.drafted).items() if count != 1]
    if unsigned:
        raise BenchError(f"{len(unsigned)} studies are not signed once")
    if "#no-more-studies" not in reading.final_url or "No more studies to read" not in reading.final_notice:
        raise BenchError(f"the reading did not end on the worklist's notice: {reading.final_url}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the summary line.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments.

    Returns
    -------
    int
        0 when every study was read and signed, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.reading",
        description="Sign normal studies with the keyboard alone in Chromium; prints a table and, last, "
        "'reading seconds_per_study=<median>'.",
    )
    parser.add_argument("--studies", type=int, default=20, help="normal studies to read (default 20)")
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="Redis database for the api (flushed)")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="pacsvlm-bench-reading-") as tmp,
        Deployment(Path(tmp) / "db", args.broker_url) as database,
    ):
        try:
            reading = read_worklist(database.database_url, args.broker_url, Path(tmp), args.studies)
            check(reading, database.database_url)
        except BenchError as exc:
            progress_console.print(f"[red]bench.reading failed:[/red] {exc}", markup=True, highlight=False)
            return 1
    console.print(results_table(reading))
    print(f"reading seconds_per_study={reading.median:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
