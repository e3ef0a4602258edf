"""The prior fetcher against real peers: Orthanc as the PACS (C-FIND + C-GET), PostgreSQL, the real intake.

The PACS is the shared :func:`tests.support.priors.prior_pacs`: the patient's prior chest CT (a localizer, a
thin and a thick axial series, a dose screen and an SR report), his radiograph and an old CT, and the
decoys that must never be used (the same Patient ID under another issuer, a namesake with another ID).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import Origin
from integration.intake.storage import InstanceStore
from integration.prior_sources import PriorSource
from integration.priors.fetcher import PriorFetcher
from integration.store.priors import claim_searches, priors_view
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, PriorSearchState, PriorState, Study, utcnow
from tests.support.peers import ListenerProcess, storescu, wait_until
from tests.support.priors import PRIOR_IMPRESSION, PRIOR_REPORT_TEXT, PriorPacs, build_current_study
from tests.support.records import db_rows
from tests.support.services import free_port


def _settings(url: str, redis_url: str, tmp_path: Path, source: PriorSource, poll: float = 0.2) -> Settings:
    return Settings(
        database_url=url,
        broker_url=redis_url,
        data_dir=tmp_path / "data",
        stable_seconds=0.1,
        fsync=False,
        prior_sources=[source],
        prior_wait_seconds=30,
        assembly_interval=poll,
    )


def _current(intake: InstanceIntake, folder: Path, date: str) -> str:
    """Store the patient's current chest CT (its first instances) as a modality sends it; return its UID."""
    study = build_current_study(folder, slices=2, date=date)
    for path in study.files:
        outcome = intake.store_part10(path.read_bytes(), Origin("CT1", "dicom", None, 0.1))
        assert outcome.succeeded, outcome.reason
    return study.uid


def _search_state(settings: Settings, study_id: int) -> PriorSearchState | None:
    with session_scope(settings.database_url) as session:
        return priors_view(session, study_id).search_state


def _study_id(settings: Settings, uid: str) -> int:
    with session_scope(settings.database_url) as session:
        return int(session.scalar(select(Study.id).where(Study.study_uid == uid)) or 0)


@pytest.fixture
def intake(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, prior_pacs: PriorPacs
) -> Iterator[InstanceIntake]:
    settings = _settings(migrated_postgres_url, redis_url, tmp_path, prior_pacs.source())
    intake = InstanceIntake(settings, InstanceStore(settings.instance_root, fsync=False))
    yield intake
    intake.close()


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_prefetch_on_the_first_instance_fetches_only_the_chosen_series(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, prior_pacs: PriorPacs, intake: InstanceIntake, kind: str
) -> None:
    # The fetcher polls only every 60 s: the search is started by the first instance's wake-up.
    settings = _settings(migrated_postgres_url, redis_url, tmp_path, prior_pacs.source(kind), poll=60)
    ct = prior_pacs.data.ct
    thin, report = ct.series_named("Chest 2.5mm").uid, ct.series_named("Report").uid
    fetcher = PriorFetcher(settings, intake)
    intake.on_new_study = fetcher.wake
    fetcher.start()
    try:
        current = _current(intake, tmp_path, "20250310")
        study_id = _study_id(settings, current)
        wait_until(lambda: _search_state(settings, study_id) is PriorSearchState.DONE, 30, message="search done")
    finally:
        fetcher.stop()
    with session_scope(settings.database_url) as session:
        view = priors_view(session, study_id)
    assert view.search_reason is None
    (prior,) = view.priors
    # The CT, not the radiograph (another modality), the old CT (beyond the look-back) or the decoys.
    assert (prior.prior_study_uid, prior.source, prior.state) == (ct.uid, "pacs", PriorState.READY)
    # Only the thin axial series and the report: not the localizer, the thick series or the dose screen.
    assert prior.series_uids == (thin, report)
    assert {f.series_uid for f in prior.files} == {thin, report}
    assert prior.instances == 21 and prior.bytes > 0
    assert prior.report_source == "sr"
    assert prior.report_text == f"Findings:\n{PRIOR_REPORT_TEXT}\nImpressions:\n{PRIOR_IMPRESSION}"
    assert (prior.study_date, prior.modality, prior.accession) == (ct.date, "CT\\SR", ct.accession)

    # Priors are never drafted: only the current study gets a job.
    StudyAssembler(settings).run_once()
    with session_scope(settings.database_url) as session:
        jobs = session.scalars(select(Study.study_uid).join(AnalysisJob, AnalysisJob.study_id == Study.id)).all()
        role = session.scalar(select(Study.role).where(Study.study_uid == ct.uid))
    assert (list(jobs), role) == ([current], "prior")

    # Another study of the patient (dated before the first, so the first is no prior of it) uses the copy we
    # now hold: it is not fetched again.
    later = _current(intake, tmp_path, "20250301")
    later_id = _search_now(settings, intake, later)
    with session_scope(settings.database_url) as session:
        (again,) = priors_view(session, later_id).priors
    assert (again.prior_study_uid, again.source, again.prior_study_id) == (
        ct.uid,
        "local",
        prior.prior_study_id,
    )
    assert again.state is PriorState.READY and again.report_source == "sr"


def _search_now(settings: Settings, intake: InstanceIntake, study_uid: str) -> int:
    """Claim the study's search and run it in this thread, as a fetcher's worker does."""
    study_id = _study_id(settings, study_uid)
    with session_scope(settings.database_url) as session:
        assert study_id in claim_searches(session, utcnow(), 10)
    PriorFetcher(settings, intake).search(study_id)
    return study_id


def test_pacs_down_fails_the_search_with_a_reason_and_the_draft_goes_ahead(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, prior_pacs: PriorPacs, intake: InstanceIntake
) -> None:
    down = prior_pacs.source(port=free_port())  # nobody listens there
    settings = _settings(migrated_postgres_url, redis_url, tmp_path, down)
    current = _current(intake, tmp_path, "20250310")
    study_id = _search_now(settings, intake, current)
    with session_scope(settings.database_url) as session:
        view = priors_view(session, study_id)
    assert view.search_state is PriorSearchState.FAILED and view.priors == ()
    assert view.search_reason is not None and view.search_reason.startswith("pacs: ")
    assert StudyAssembler(settings, wait_for_priors=True).run_once().jobs_created == 1


def test_the_listener_prefetches_by_c_move_and_the_job_waits_for_the_prior(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, prior_pacs: PriorPacs
) -> None:
    """``pacs-vlm listen`` end to end: the first C-STORE starts the search, the PACS sends the prior by C-MOVE."""
    source = prior_pacs.source(name="pacs-move", retrieve="move").model_dump(mode="json")
    listener = listener_factory(
        migrated_postgres_url,
        redis_url,
        stable_seconds=0.5,
        extra_env={"PACSVLM_PRIOR_SOURCES": json.dumps([source]), "PACSVLM_PRIOR_WAIT_SECONDS": "60"},
    )
    prior_pacs.register(port=listener.port)
    current = build_current_study(listener.data_dir / "sent", slices=2)
    assert storescu(listener.port, current.files).returncode == 0
    url = migrated_postgres_url
    wait_until(lambda: db_rows(url, "SELECT id FROM analysis_jobs"), 60, message=f"a job\n{listener.log()}")
    (prior,) = db_rows(url, "SELECT prior_study_uid, source, state, instances, report_source FROM study_priors")
    assert prior == (prior_pacs.data.ct.uid, "pacs-move", "ready", 21, "sr")
    jobs = db_rows(url, "SELECT s.study_uid FROM analysis_jobs j JOIN studies s ON s.id = j.study_id")
    assert jobs == [(current.uid,)]
    # Stable 0.5 s after its last instance, the study waited for its search (about 2 s) before its job.
    assert db_rows(url, "SELECT j.created_at >= p.finished_at FROM analysis_jobs j, prior_searches p") == [(True,)]
