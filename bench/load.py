"""Load benchmark: concurrent associations into the listener while a worker drafts.

``python -m bench.load`` starts ``pacs-vlm listen`` (PostgreSQL, Redis, fsync on) and a
``pacs-vlm worker`` drafting with a tiny randomly initialised smoke model (built in a temporary
folder unless ``--model`` names a staged one), then opens ``--associations`` concurrent
associations (default 8), one study each, and sends ``--instances`` instances on each (default
300): distinct CT instances made from pydicom's ``CT_small.dcm`` with new UIDs (128 x 128 pixels,
about 39 kB each).  The sender is pynetdicom, one AE and association per thread, streaming each file
without decoding it; every ``send_c_store`` is timed from the request to the response status.

Studies complete after an idle time of 2 s and are drafted while other associations are still
sending.  Afterwards the benchmark checks that every instance was stored exactly once (rows,
distinct SOP Instance UIDs and files) and waits for one draft per study.  It prints a table
(C-STORE p50 and p99, instances per second, the listener's peak RSS, drafts) and, last::

    load stored=<n>/<expected> p99_ms=<x>

The exit status is 0 when every instance was stored once and every study drafted once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench import load_retention
from bench.ingest import (
    BenchError,
    ManagedProcess,
    console,
    free_port,
    port_open,
    positive_int,
    progress_console,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
CALLING_AE = "LOADTEST"
POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/11"
UPLOADER = ("fuzz_uploader", "fuzzing is not a password 1")


class Deployment:
    """A fresh PostgreSQL database, a flushed Redis database and the processes started on them.

    Parameters
    ----------
    workdir : pathlib.Path
        Folder for data and logs.
    broker_url : str
        Redis database URL (flushed before and after).
    database_url : str, optional
        An existing, migrated database to use; a new one is created (and dropped) when omitted.
    """

    repo = REPO

    def __init__(self, workdir: Path, broker_url: str, database_url: str | None = None) -> None:
        self.workdir = workdir
        self.broker_url = broker_url
        self.database_url = database_url or ""
        self._database_name: str | None = None
        self.data_dir = workdir / "data"
        self.dicom_port = free_port()
        self.processes: list[ManagedProcess] = []

    def __enter__(self) -> Deployment:
        from integration.store.migrate import upgrade

        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            import psycopg

            self._database_name = f"pacsvlm_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self._database_name}"')
            self.database_url = POSTGRES_URL.format(name=self._database_name)
            upgrade(self.database_url)
        self._flush_broker()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for process in reversed(self.processes):
            process.stop()
        self._flush_broker()
        if self._database_name is not None:
            import psycopg

            with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._database_name}" WITH (FORCE)')

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """Return a process environment with this deployment's ``PACSVLM_*`` settings plus ``extra``."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PACSVLM_")}
        env.update(
            PACSVLM_DATABASE_URL=self.database_url,
            PACSVLM_BROKER_URL=self.broker_url,
            PACSVLM_DATA_DIR=str(self.data_dir),
            PACSVLM_CALLING_AES=json.dumps({CALLING_AE: {}, "FUZZER": {}}),
            PACSVLM_LISTEN_HOST="127.0.0.1",
            PACSVLM_LISTEN_PORT=str(self.dicom_port),
            PACSVLM_MIN_FREE_BYTES="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def start_listener(self, extra: dict[str, str], port: int | None = None) -> ManagedProcess:
        """Start ``pacs-vlm listen`` (on ``port``, else the deployment's) and wait for its port."""
        port = port or self.dicom_port
        listener = ManagedProcess(
            "pacs-vlm listen",
            [sys.executable, "-m", "worker.cli", "listen"],
            self.env({**extra, "PACSVLM_LISTEN_PORT": str(port)}),
            self.workdir / f"listener-{port}.log",
            cwd=REPO,
        )
        listener.start()
        self.processes.append(listener)
        wait_until(lambda: port_open(port), "open DICOM port", listener)
        return listener

    def start_worker(self, model_dir: Path, extra: dict[str, str]) -> ManagedProcess:
        """Start ``pacs-vlm worker`` on the CPU with the given model."""
        worker = ManagedProcess(
            "pacs-vlm worker",
            [sys.executable, "-m", "worker.cli", "worker", "--log-level", "info"],
            self.env(
                {
                    "PACSVLM_MODEL": str(model_dir),
                    "PACSVLM_MODEL_DEVICE": "cpu",
                    "PACSVLM_MAX_NEW_TOKENS": "16",
                    "PACSVLM_IMAGE_SIZE": "128",
                    **extra,
                }
            ),
            self.workdir / "worker.log",
            cwd=REPO,
        )
        worker.start()
        self.processes.append(worker)
        return worker

    def add_uploader(self) -> tuple[str, str]:
        """Create a site and an uploader (for STOW-RS); return the credentials."""
        from integration.store.session import session_scope
        from integration.store.tables import UserRole
        from integration.store.users import create_site, create_user

        with session_scope(self.database_url) as session:
            create_site(session, "FUZZ", "Fuzzing")
            create_user(session, UPLOADER[0], UPLOADER[1], UserRole.UPLOADER, "FUZZ")
        return UPLOADER

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        """Run a fixed query (no input) on the deployment's database."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql))]
        finally:
            engine.dispose()

    def _flush_broker(self) -> None:
        import redis

        client = redis.Redis.from_url(self.broker_url)
        try:
            client.flushdb()
        finally:
            client.close()


def write_studies(folder: Path, studies: int, instances: int) -> list[list[Path]]:
    """Write ``studies`` CT studies of ``instances`` distinct instances each (new UIDs on ``CT_small.dcm``).

    Parameters
    ----------
    folder : pathlib.Path
        Where the files go.
    studies, instances : int
        How many.

    Returns
    -------
    list of list of pathlib.Path
        The files of each study, in sending order.
    """
    import pydicom
    from pydicom.uid import generate_uid

    from integration.samples import pydicom_test_file

    template = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    out: list[list[Path]] = []
    for study in range(studies):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.AccessionNumber = f"LOAD{study:04d}"
        files = []
        for number in range(instances):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = number + 1
            path = folder / f"study{study}" / f"{number:05d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        out.append(files)
    return out


@dataclass
class SendResult:
    """One association's C-STORE response times (seconds) and statuses."""

    seconds: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    error: str = ""


def send_study(port: int, files: Sequence[Path], start: threading.Barrier) -> SendResult:
    """Send files on one pynetdicom association, timing every C-STORE from request to response.

    Parameters
    ----------
    port : int
        The listener's port.
    files : sequence of pathlib.Path
        Part 10 files (streamed without decoding).
    start : threading.Barrier
        All associations start sending together.

    Returns
    -------
    SendResult
        Times and statuses.
    """
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    result = SendResult()
    start.wait()
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSVLM", max_pdu=131072)
    if not assoc.is_established:
        result.error = "association not established"
        return result
    try:
        for path in files:
            began = time.perf_counter()
            answer = assoc.send_c_store(path)
            result.seconds.append(time.perf_counter() - began)
            result.statuses.append(int(answer.Status) if "Status" in answer else -1)
    finally:
        assoc.release()
    return result


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size (``VmHWM``) of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="Concurrent associations into the listener while a worker drafts; "
        "print a table and, last, 'load stored=<n>/<expected> p99_ms=<x>'.",
    )
    parser.add_argument("--associations", type=positive_int, default=8, help="concurrent associations (default 8)")
    parser.add_argument("--instances", type=positive_int, default=300, help="instances per association (default 300)")
    parser.add_argument("--model", type=Path, help="staged model folder (default: a smoke model built for the run)")
    parser.add_argument("--database-url", help="an existing migrated database (default: a new one on 127.0.0.1:5432)")
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="Redis database (flushed)")
    parser.add_argument("--draft-timeout", type=float, default=600.0, help="seconds to wait for the drafts")
    parser.add_argument(
        "--retention",
        action="store_true",
        help="retention active: signed seed studies fill a storage quota the load overflows, so the purge loop "
        "purges while it loads; adds 'lost=<n> purged=<studies>' (see bench/load_retention.py)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load benchmark; print the table and the summary line.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments.

    Returns
    -------
    int
        0 when every instance was stored exactly once and every study drafted once, else 1.
    """
    from rich.table import Table

    args = parse_args(argv)
    expected = args.associations * args.instances
    with tempfile.TemporaryDirectory(prefix="pacsvlm-load-") as tmp:
        workdir = Path(tmp)
        progress_console.print(f"writing {args.associations} studies x {args.instances} instances ...")
        studies = write_studies(workdir / "studies", args.associations, args.instances)
        seed = write_studies(workdir / "seed", args.associations, args.instances) if args.retention else []
        retention = load_retention.plan(seed, studies) if args.retention else None
        model = args.model
        if model is None:
            from models.smoke import build_smoke_model

            model = build_smoke_model("llava", workdir / "smoke-model")
        try:
            with Deployment(workdir, args.broker_url, args.database_url) as deploy:
                listener = deploy.start_listener(
                    {
                        "PACSVLM_STABLE_SECONDS": "2",
                        "PACSVLM_ASSEMBLY_INTERVAL": "0.5",
                        # one modality AE opens every association here: let it hold them all
                        "PACSVLM_MAX_ASSOCIATIONS": str(max(16, args.associations + 2)),
                        "PACSVLM_MAX_ASSOCIATIONS_PER_AE": str(args.associations),
                        **(retention.env() if retention is not None else {}),
                    }
                )
                worker = deploy.start_worker(model, {})
                assert listener.process is not None
                if retention is not None:
                    progress_console.print(f"seeding {len(seed)} studies, drafted and signed ...")
                    load_retention.seed_and_sign(deploy, seed, send_study, args.draft_timeout, worker.running)
                barrier = threading.Barrier(args.associations)
                progress_console.print(f"sending on {args.associations} associations ...")
                began = time.perf_counter()
                with ThreadPoolExecutor(args.associations) as pool:
                    futures = [pool.submit(send_study, deploy.dicom_port, files, barrier) for files in studies]
                    results = [future.result() for future in futures]
                elapsed = time.perf_counter() - began
                peak_rss = peak_rss_bytes(listener.process.pid)
                rows = deploy.rows("SELECT count(*), count(DISTINCT sop_instance_uid) FROM instances")[0]
                files_on_disk = sum(
                    1 for path in (deploy.data_dir / "instances").rglob("*.dcm") if ".incoming" not in path.parts
                )
                progress_console.print("waiting for the drafts ...")
                deadline = time.monotonic() + args.draft_timeout
                drafts: list[tuple[object, ...]] = []

                def drafts_now() -> list[tuple[object, ...]]:
                    if retention is not None:  # the load's studies only (seed studies have theirs)
                        return load_retention.count_load(deploy, studies, expected).drafts
                    return deploy.rows("SELECT study_id, count(*) FROM reports GROUP BY study_id")

                while time.monotonic() < deadline and worker.running():
                    drafts = drafts_now()
                    if len(drafts) >= args.associations:
                        break
                    time.sleep(0.5)
                drafted_at = time.perf_counter() - began
                drafts = drafts_now()
                held = load_retention.count_load(deploy, studies, expected) if retention is not None else None
                if held is not None:
                    rows, files_on_disk = (held.rows, held.distinct), held.files
        except BenchError as exc:
            progress_console.print("[red]load benchmark failed:[/red]", end=" ")
            progress_console.print(str(exc), markup=False, highlight=False)
            return 1
    times = [s for result in results for s in result.seconds]
    successes = sum(status == 0 for result in results for status in result.statuses)
    stored = min(int(str(rows[0])), int(str(rows[1])), files_on_disk)
    exactly_once = int(str(rows[0])) == int(str(rows[1])) == files_on_disk == expected == successes
    drafted_once = len(drafts) == args.associations and all(int(str(count)) == 1 for _, count in drafts)
    p50 = percentile(times, 0.50) * 1000 if times else 0.0
    p99 = percentile(times, 0.99) * 1000 if times else 0.0
    table = Table(title=f"load: {args.associations} associations x {args.instances} instances (CT_small, 39 kB)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (
        ("C-STORE answered Success", f"{successes}/{expected}"),
        ("instance rows / distinct SOP UIDs / files", f"{rows[0]} / {rows[1]} / {files_on_disk}"),
        ("C-STORE p50 (ms)", f"{p50:.1f}"),
        ("C-STORE p99 (ms)", f"{p99:.1f}"),
        ("C-STORE max (ms)", f"{max(times) * 1000 if times else 0.0:.1f}"),
        ("mean per C-STORE (ms)", f"{statistics.fmean(times) * 1000 if times else 0.0:.1f}"),
        ("instances/s (all associations)", f"{expected / elapsed:.1f}"),
        ("send wall time (s)", f"{elapsed:.1f}"),
        ("listener peak RSS (MiB)", f"{peak_rss / 2**20:.0f}"),
        ("studies drafted once", f"{sum(int(str(c)) == 1 for _, c in drafts)}/{args.associations}"),
        ("all drafted after (s)", f"{drafted_at:.1f}"),
        ("association errors", str(sum(bool(r.error) for r in results))),
        *load_retention.table_rows(retention, held),
    ):
        table.add_row(name, value)
    console.print(table)
    tail = f" lost={held.lost} purged={held.purged_studies}" if held is not None else ""
    print(f"load stored={stored}/{expected} p99_ms={p99:.1f}{tail}", flush=True)
    return 0 if exactly_once and drafted_once and (held is None or held.lost == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
