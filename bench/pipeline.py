"""Per-study time the worker spends outside ``generate``: read, select, decode, window, preprocess, database.

Two studies go through the worker's real pipeline (:func:`worker.pipeline.draft_study` and the
database steps of :mod:`integration.store.reports`) with a backend that answers at once, so what is
left is our overhead: a generated CT series (default 300 slices of 512 x 512, 16 bit) and a
two-image radiograph study (2 DX images of 2500 x 2048, 16 bit).  Each round creates a fresh
analysis job per study and times claim, instance lookup, image preparation, prompt, parsing and the
draft's commit; ``generate`` is excluded.  Peak memory is the tracemalloc peak (Python and numpy
allocations) during the study, taken in one extra, untimed round.

The database is a fresh PostgreSQL database on 127.0.0.1:5432 when one answers (production), else
SQLite.  The last line is ``pipeline overhead_s=<median seconds per study, CT series>``; the target
is under 1.0 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from integration.config import Settings
from integration.intake.header import read_header
from integration.safety.critical import prepare as prepare_critical_matcher
from integration.samples import write_ct_series
from integration.store.migrate import upgrade
from integration.store.reports import ClaimedJob, claim_job, instance_files, record_draft
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, Instance, JobState, Series, Study, StudyState
from models.backend import GenerationRequest, GenerationResult, ModelIdentity
from worker.pipeline import draft_study

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
ANSWER = '{"findings": [{"text": "No acute abnormality.", "images": [1]}], "impression": "Normal.", "limitations": ""}'


class InstantBackend:
    """A backend that answers at once: the benchmark measures everything but the model."""

    def __init__(self) -> None:
        self._identity = ModelIdentity("bench/instant", "0", "llava")

    @property
    def identity(self) -> ModelIdentity:
        """The fake model's identity (a new revision per round, so every round stores a new draft)."""
        return self._identity

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer every request with the same short JSON draft, at once."""
        return [GenerationResult(r.request_id, ANSWER, 100, 20, 0.0) for r in requests]


@dataclass
class Measured:
    """Times of one study over the rounds."""

    study: str
    images: int = 0
    overhead: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    peak_mb: list[float] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        """Record one step's time."""
        self.steps.setdefault(name, []).append(seconds)


def write_radiographs(folder: Path, count: int = 2, rows: int = 2500, columns: int = 2048) -> list[Path]:
    from pydicom import Dataset

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = DX_IMAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = DX_IMAGE
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.BodyPartExamined, ds.ImageType = "DX", "CHEST", ["ORIGINAL", "PRIMARY"]
        ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
        ds.PatientName, ds.PatientID = "BENCH^RADIOGRAPH", "BENCH"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = rng.integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
        path = folder / f"DX{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def database_url(folder: Path) -> str:
    try:
        import psycopg

        name = f"pacsvlm_bench_pipeline_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    except Exception:
        return f"sqlite:///{folder / 'pipeline.sqlite'}"


def drop_database(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    import psycopg

    from integration.store.session import engine_for

    engine_for(url).dispose()
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def register(url: str, root: Path, files: Sequence[Path]) -> int:
    """Rows for a study whose files lie under ``root`` (as the listener would have written them)."""
    now = datetime.now(UTC)
    headers = [(path, read_header(_dataset_bytes(path), ExplicitVRLittleEndian)) for path in files]
    first = headers[0][1]
    with session_scope(url) as session:
        study = Study(
            study_uid=first.study_uid,
            state=StudyState.QUEUED,
            version=1,
            calling_ae="BENCH",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
        )
        session.add(study)
        session.flush()
        series = Series(
            series_uid=first.series_uid, study_id=study.id, modality=first.modality, body_part=first.body_part
        )
        session.add(series)
        session.flush()
        for path, header in headers:
            session.add(
                Instance(
                    sop_instance_uid=header.sop_instance_uid,
                    sop_class_uid=header.sop_class_uid,
                    series_id=series.id,
                    study_version=1,
                    instance_number=header.instance_number,
                    storage_path=str(path.relative_to(root)),
                    size_bytes=path.stat().st_size,
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    calling_ae="BENCH",
                    received_at=now,
                )
            )
        return study.id


def _dataset_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


def run_study(settings: Settings, study_id: int, round_number: int, measured: Measured, *, memory: bool) -> None:
    url = settings.database_url
    with session_scope(url) as session:
        job = AnalysisJob(study_id=study_id, study_version=1, queue="analysis", state=JobState.QUEUED)
        session.add(job)
        session.flush()
        job_id = job.id
    backend = InstantBackend()
    backend._identity = ModelIdentity("bench/instant", f"round-{round_number}", "llava")
    if memory:  # tracemalloc slows Python down: the memory round is not timed
        tracemalloc.start()
    started = time.perf_counter()
    with session_scope(url) as session:
        claimed = claim_job(session, job_id, max_attempts=3, now=datetime.now(UTC))
        assert isinstance(claimed, ClaimedJob)
        files = instance_files(session, claimed.study_id, claimed.study_version)
    db_before = time.perf_counter() - started
    draft = draft_study(settings, claimed, files, backend)
    mark = time.perf_counter()
    with session_scope(url) as session:
        record_draft(session, job_id, draft, datetime.now(UTC))
    db_after = time.perf_counter() - mark
    total = time.perf_counter() - started
    measured.images = len({e["image"] for e in draft.evidence})
    if memory:
        measured.peak_mb.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
        return
    measured.overhead.append(total - draft.timings["generate_s"])
    measured.add("db", db_before + db_after)
    for name, value in draft.timings.items():  # seconds only (the safety net also records counts)
        if name.endswith("_s") and name not in ("generate_s", "load_s"):
            measured.add(name.removesuffix("_s"), value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300, help="CT slices (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per study (default 5)")
    args = parser.parse_args()
    console = Console(width=200)
    with tempfile.TemporaryDirectory() as scratch, Progress(console=console, transient=True) as progress:
        root = Path(scratch) / "instances"
        task = progress.add_task("writing studies", total=None)
        ct = write_ct_series(root / "ct", args.slices)
        dx = write_radiographs(root / "dx")
        progress.update(task, description="building the critical-finding matcher (once per worker process)")
        prepare_critical_matcher()
        url = database_url(Path(scratch))
        try:
            upgrade(url)
            settings = Settings(data_dir=Path(scratch), database_url=url, storage_dir=root, max_new_tokens=256)
            studies = {
                f"CT series ({args.slices} slices)": register(url, root, ct),
                "radiograph (2 images)": register(url, root, dx),
            }
            total = (args.rounds + 1) * len(studies)
            progress.update(task, description="running the pipeline", total=total, completed=0)
            results = {name: Measured(name) for name in studies}
            for round_number in range(args.rounds + 1):  # the last round measures memory only
                for name, study_id in studies.items():
                    run_study(settings, study_id, round_number, results[name], memory=round_number == args.rounds)
                    progress.advance(task)
        finally:
            drop_database(url)
    steps = sorted({step for m in results.values() for step in m.steps})
    table = Table("study", "images", *[f"{s} s" for s in steps], "overhead s", "peak MB", title="median per study")
    for m in results.values():
        table.add_row(
            m.study,
            str(m.images),
            *[f"{statistics.median(m.steps[s]):.3f}" if s in m.steps else "-" for s in steps],
            f"{statistics.median(m.overhead):.3f}",
            f"{statistics.median(m.peak_mb):.0f}",
        )
    console.print(table)
    console.print(f"database: {'PostgreSQL' if url.startswith('postgresql') else 'SQLite'}; rounds: {args.rounds}")
    ct_name = next(iter(results))
    print(f"pipeline overhead_s={statistics.median(results[ct_name].overhead):.3f}")


if __name__ == "__main__":
    main()
