r"""What a prior study costs the draft: time from the current study becoming stable to the draft request, and bytes.

Orthanc with its DICOMweb plugin is the PACS (:mod:`bench.prior_data`): it holds the patient's prior chest CT
of six series -- a localizer, an axial 1 mm series (default 300 slices), an axial 5 mm series (60), coronal and
sagittal reformats (300 each, ``DERIVED\SECONDARY\REFORMATTED``) and an SR report -- at 256x256 pixels.  The
patient's current chest CT (300 slices, a later date) is stored through our real intake
(:class:`~integration.intake.intake.InstanceIntake`, in process, fsync on as in production) and the real
:class:`~integration.priors.fetcher.PriorFetcher` finds and retrieves the prior, for each retrieval:

- ``C-GET``: a ``dimse`` prior source (C-FIND, then C-GET of the chosen series);
- ``WADO-RS``: a ``dicomweb`` prior source (QIDO-RS, then WADO-RS of the chosen series);

and each mode:

- ``prefetch``: the fetcher runs while the current study arrives and is woken by the intake's
  ``on_new_study`` when its first instance is stored (production);
- ``after-stable``: the fetcher starts only once the last current instance is stored.

**Stable** is the moment the current study's last instance is stored (the ``store`` call returned): the
start of the idle timer after which the study is complete.  **Ready** is the moment the draft request is
ready: the prior search has finished (its state, read from the store, is done or failed) and the worker's
own :func:`worker.pipeline.draft_study` -- with ``priors`` from :func:`~integration.store.priors.priors_view`,
as the analysis task reads them -- has prepared the current and prior images and the prompt and calls the
backend's ``generate``.  The backend is a stand-in (a multi-image MedGemma identity) that notes when
``generate`` is entered and answers nothing: the model's time is excluded, being the same with or without
priors.  ``ready_after_stable_s`` is ready minus stable; ``fetch_s`` the retrieval's own time as the fetcher
recorded it.

Bytes: ``bytes_fetched_ratio`` is what the retrieval brought (``study_priors.bytes``) over the whole prior
study (the sum of the files uploaded to Orthanc); only the series the routing rule selects (the largest
original axial series) and the SR report should travel.

Each of ``--rounds`` rounds measures every retrieval and mode on a fresh database and instance store (so the
prior is fetched again each time); medians are reported.  The database is a temporary SQLite file (the
embedded defaults), or, with ``--database-url`` / ``PACSVLM_DATABASE_URL`` naming a PostgreSQL server, a fresh
database created on that server per measurement and dropped after it.  Migrations run as ``pacs-vlm db
upgrade`` runs them.

The current study arrives as fast as the in-process intake stores it (``arrival_s`` in the table), the
hardest case for prefetch: the prior is then retrieved while the study arrives and can only be on disk at
stability when its retrieval is quicker than the arrival.  ``--arrival-s`` spreads the arrival as a modality
sending over a network would.

The last line is ``priors ready_after_stable_s=<median of the prefetch rows (their per-retrieval medians)>
bytes_fetched_ratio=<fetched/whole prior>``.  Goals (issue 15): under 1 s after stability when prefetched,
under 40% of the prior's bytes for a multi-series CT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bench.prior_data import REPORT_TEXT, PriorPacs, Sizes, Study, current_study, prior_study
from bench.processes import BenchError, console, progress_console
from integration.config import Settings
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import Origin
from integration.intake.storage import InstanceStore
from integration.prior_sources import PriorSource
from integration.priors.fetcher import PriorFetcher
from integration.store.migrate import upgrade
from integration.store.priors import priors_view
from integration.store.reports import ClaimedJob, instance_files
from integration.store.session import engine_for, session_scope
from integration.store.tables import PriorSearch, PriorSearchState, PriorState
from integration.store.tables import Study as StudyRow
from models.backend import GenerationRequest, GenerationResult, ModelIdentity
from worker.pipeline import draft_study

RETRIEVALS = ("C-GET", "WADO-RS")
MODES = ("prefetch", "after-stable")
#: The modality that sends the current study (any AE: the in-process intake checks no allowlist).
MODALITY_AE = "CT1"
#: Longest wait for a prior search, from stability.
SEARCH_TIMEOUT = 300.0
POLL_SECONDS = 0.01
GOAL_READY_S = 1.0
GOAL_RATIO = 0.40
QUICK = Sizes(slices=20, thick=4, reformats=20, current=20, size=64)


class RequestTimer:
    """A multi-image backend that notes when ``generate`` is entered (the request is ready) and answers nothing."""

    def __init__(self) -> None:
        self.entered: float | None = None
        self.prompt = ""

    @property
    def identity(self) -> ModelIdentity:
        """A MedGemma identity: separate images, the prior's first (:data:`models.registry.FAMILIES`)."""
        return ModelIdentity(model_id="bench", revision="bench", family="medgemma")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Note the time and the prompt; answer every request with an empty text."""
        self.entered = time.perf_counter()
        self.prompt = "\n".join(f"{r.preamble or ''}\n{r.prompt}" for r in requests)
        return [GenerationResult(r.request_id, "", 0, 0, 0.0) for r in requests]


@dataclass(frozen=True)
class Measurement:
    """One retrieval in one mode on a fresh store."""

    retrieval: str
    mode: str
    arrival_s: float
    ready_s: float
    search_s: float
    fetch_s: float
    instances: int
    bytes: int
    state: str
    in_prompt: bool
    prior_images: int


class Databases:
    """A fresh database per measurement: a SQLite file, or a database created on a PostgreSQL server."""

    def __init__(self, server_url: str | None) -> None:
        self.server = make_url(server_url) if server_url and server_url.startswith("postgresql") else None

    @property
    def kind(self) -> str:
        """The database engine, for the report."""
        return "PostgreSQL" if self.server is not None else "SQLite"

    def create(self, folder: Path) -> str:
        """Return the URL of a new, migrated database."""
        if self.server is None:
            url = f"sqlite:///{(folder / 'pacs-vlm.sqlite').as_posix()}"
        else:
            import psycopg

            name = f"pacsvlm_bench_priors_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(self._admin(), autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{name}"')
            url = self.server.set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        return url

    def drop(self, url: str) -> None:
        """Close the database's connections; drop it when it was created on a server."""
        engine_for(url).dispose()
        if self.server is None:
            return
        import psycopg

        with psycopg.connect(self._admin(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def _admin(self) -> str:
        assert self.server is not None
        return self.server.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)


def _search_state(url: str, study_id: int) -> str | None:
    with session_scope(url) as session:
        return session.scalar(select(PriorSearch.state).where(PriorSearch.study_id == study_id))


def _wait_for_search(url: str, study_id: int) -> None:
    """Poll the store until the study's prior search has ended (done or failed)."""
    ended = {PriorSearchState.DONE.value, PriorSearchState.FAILED.value}
    deadline = time.monotonic() + SEARCH_TIMEOUT
    while str(_search_state(url, study_id)) not in ended:
        if time.monotonic() > deadline:
            raise BenchError(f"the prior search did not end within {SEARCH_TIMEOUT:.0f} s of stability")
        time.sleep(POLL_SECONDS)


def _store_current(intake: InstanceIntake, settings: Settings, current: Study, arrival_s: float) -> tuple[int, int]:
    """Store the current study as a modality sends it (spread over ``arrival_s``); return its row id and version."""
    origin = Origin(MODALITY_AE, "dicom", None, settings.stable_seconds)
    started, gap = time.perf_counter(), arrival_s / max(len(current.files) - 1, 1)
    for index, data in enumerate(current.files):
        if arrival_s:
            time.sleep(max(0.0, started + index * gap - time.perf_counter()))
        outcome = intake.store_part10(data, origin)
        if not outcome.succeeded:
            raise BenchError(f"the intake refused a current instance: {outcome.reason}")
    with session_scope(settings.database_url) as session:
        row = session.execute(select(StudyRow.id, StudyRow.version).where(StudyRow.study_uid == current.uid)).one()
    return int(row.id), int(row.version)


def measure(
    source: PriorSource, retrieval: str, mode: str, current: Study, databases: Databases, scratch: Path,
    arrival_s: float = 0.0,
) -> Measurement:  # fmt: skip
    """Store the current study on a fresh store and time its prior until the draft request is ready."""
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    url = databases.create(folder)
    settings = Settings(
        data_dir=folder, database_url=url, prior_sources=[source], min_free_bytes=0, max_new_tokens=256,
    )  # fmt: skip
    intake = InstanceIntake(settings, InstanceStore(settings.instance_root, fsync=settings.fsync, min_free_bytes=0))
    fetcher = PriorFetcher(settings, intake)
    started = False
    try:
        if mode == "prefetch":
            intake.on_new_study = fetcher.wake
            fetcher.start()
            started = True
        arriving = time.perf_counter()
        study_id, version = _store_current(intake, settings, current, arrival_s)
        stable = time.perf_counter()  # the last instance is stored: the idle timer starts
        if not started:
            fetcher.start()
            started = True
            fetcher.wake()
        _wait_for_search(url, study_id)
        searched = time.perf_counter()
        timer = RequestTimer()
        with session_scope(url) as session:
            files = instance_files(session, study_id, version)
            view = priors_view(session, study_id)
        job = ClaimedJob(0, study_id, current.uid, version, 1, MODALITY_AE)
        draft = draft_study(settings, job, files, timer, priors=view)
        if timer.entered is None:
            raise BenchError("the draft never called the backend")
    finally:
        if started:
            fetcher.stop()
        intake.close()
        databases.drop(url)
        shutil.rmtree(folder, ignore_errors=True)
    prior = view.priors[0] if view.priors else None
    if prior is None:
        raise BenchError(f"{retrieval} {mode}: no prior was chosen ({view.search_reason})")
    prior_images = len({e["image"] for e in draft.evidence if e.get("prior")})
    return Measurement(
        retrieval=retrieval,
        mode=mode,
        arrival_s=stable - arriving,
        ready_s=timer.entered - stable,
        search_s=searched - stable,
        fetch_s=prior.seconds,
        instances=prior.instances,
        bytes=prior.bytes,
        state=prior.state.value if prior.state is not PriorState.READY else "ready",
        in_prompt=REPORT_TEXT in timer.prompt,
        prior_images=prior_images,
    )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    runs: Sequence[Measurement], whole: int, sizes: Sizes, rounds: int, databases: Databases, arrival_s: float
) -> None:
    """Print the table (medians per retrieval and mode), its caption of goals, and the summary line."""
    rows = {
        (retrieval, mode): [r for r in runs if (r.retrieval, r.mode) == (retrieval, mode)]
        for retrieval in RETRIEVALS
        for mode in MODES
    }
    ready = {key: _median([r.ready_s for r in group]) for key, group in rows.items()}
    prefetch = _median([ready[retrieval, "prefetch"] for retrieval in RETRIEVALS])
    ratio = _median([r.bytes / whole for r in runs])
    met = {True: "[green]met[/]", False: "[red]not met[/]"}
    each = ", ".join(
        f"{retrieval} {ready[retrieval, 'prefetch']:.3f} s {met[ready[retrieval, 'prefetch'] < GOAL_READY_S]}"
        for retrieval in RETRIEVALS
    )
    table = Table(
        "retrieval", "mode", "arrival_s", "ready_after_stable_s", "search_done_s", "fetch_s", "instances",
        "bytes fetched", "ratio", "prior", "prior images", "report in prompt",
        title=f"prior of {whole / 2**20:.1f} MiB: median of {rounds} round(s)",
        caption=(
            f"goal: ready under {GOAL_READY_S:.0f} s after stable when prefetched: {prefetch:.3f} s "
            f"{met[prefetch < GOAL_READY_S]} ({each}); under {GOAL_RATIO:.0%} of the prior's bytes: "
            f"{ratio:.1%} {met[ratio < GOAL_RATIO]}"
        ),
    )  # fmt: skip
    for (retrieval, mode), group in rows.items():
        fetched = int(_median([r.bytes for r in group]))
        table.add_row(
            retrieval,
            mode,
            f"{_median([r.arrival_s for r in group]):.3f}",
            f"{ready[retrieval, mode]:.3f}",
            f"{_median([r.search_s for r in group]):.3f}",
            f"{_median([r.fetch_s for r in group]):.3f}",
            str(int(_median([r.instances for r in group]))),
            f"{fetched:,}",
            f"{fetched / whole:.3f}",
            ", ".join(sorted({r.state for r in group})),
            str(int(_median([r.prior_images for r in group]))),
            "yes" if all(r.in_prompt for r in group) else "no",
        )
    console.print(table)
    pace = f"over {arrival_s:g} s" if arrival_s else "as fast as the intake stores them"
    console.print(
        f"prior: {sizes.slices}+{sizes.thick}+2x{sizes.reformats} slices, a localizer and an SR at "
        f"{sizes.size}x{sizes.size}; current: {sizes.current} slices arriving {pace}; database: {databases.kind}; "
        f"rounds: {rounds}"
    )
    print(f"priors ready_after_stable_s={prefetch:.3f} bytes_fetched_ratio={ratio:.3f}")


def start_pacs(scratch: Path, attempts: int = 3) -> PriorPacs:
    """Start Orthanc on free ports, again on others when a port was taken between choosing and binding it."""
    for attempt in range(1, attempts + 1):
        pacs = PriorPacs(scratch / f"orthanc-{attempt}")
        try:
            return pacs.start()
        except BenchError as exc:
            if "already in use" not in str(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.priors", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--slices", type=int, default=300, help="slices of the prior's thin series (default 300)")
    parser.add_argument("--current", type=int, default=300, help="slices of the current study (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on fresh stores (default 3)")
    parser.add_argument(
        "--database-url", default=os.environ.get("PACSVLM_DATABASE_URL"),
        help="a PostgreSQL URL: a fresh database is created on its server per measurement "
        "(default: $PACSVLM_DATABASE_URL, else a temporary SQLite file)",
    )  # fmt: skip
    parser.add_argument(
        "--arrival-s", type=float, default=0.0,
        help="spread the current study's instances over this many seconds, as a modality sends them "
        "(default 0: as fast as the intake stores them, the hardest case for prefetch)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 20-slice series at 64x64, one round (the tests)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        sizes, rounds = QUICK, 1
    else:
        sizes = Sizes(slices=args.slices, current=args.current, size=args.size)
        rounds = args.rounds
    databases = Databases(args.database_url)
    runs: list[Measurement] = []
    with (
        tempfile.TemporaryDirectory(prefix="pacsvlm-bench-priors-") as scratch,
        Progress(console=progress_console, transient=True) as progress,
    ):
        task = progress.add_task("building the studies", total=None)
        prior, current = prior_study(sizes), current_study(sizes)
        pacs = start_pacs(Path(scratch))
        try:
            progress.update(task, description="uploading the prior to Orthanc", total=len(prior.files))
            pacs.upload(prior.files, lambda: progress.advance(task))
            if pacs.instances() != len(prior.files):
                raise BenchError(f"Orthanc holds {pacs.instances()} instances, not {len(prior.files)}")
            sources = pacs.sources()
            total = rounds * len(RETRIEVALS) * len(MODES)
            progress.update(task, description="measuring", total=total, completed=0)
            for round_number in range(1, rounds + 1):
                for retrieval in RETRIEVALS:
                    for mode in MODES:
                        progress.update(task, description=f"round {round_number}: {retrieval} {mode}")
                        runs.append(
                            measure(
                                sources[retrieval],
                                retrieval,
                                mode,
                                current,
                                databases,
                                Path(scratch),
                                args.arrival_s,
                            )
                        )
                        progress.advance(task)
        finally:
            pacs.stop()
    report(runs, prior.bytes, sizes, rounds, databases, args.arrival_s)


if __name__ == "__main__":
    main()
