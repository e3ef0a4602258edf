"""Prior searches, reserved prior studies and the gating of jobs, on PostgreSQL (and the SQLite ingest path)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from integration.intake.header import InstanceHeader
from integration.store.ingest import Conflict, Receipt, record_instance
from integration.store.jobs import complete_stable_studies
from integration.store.migrate import ensure_schema
from integration.store.opinions import PriorStudyNotDrafted, request_second_opinion
from integration.store.priors import (
    claim_searches,
    finish_search,
    local_candidates,
    open_search,
    priors_view,
    record_prior,
    reserve_prior_study,
    update_prior,
)
from integration.store.queries import study_summaries
from integration.store.session import engine_for, session_scope
from integration.store.tables import (
    ROLE_CURRENT,
    ROLE_PRIOR,
    AnalysisJob,
    Instance,
    PriorSearch,
    PriorSearchState,
    PriorState,
    Site,
    Study,
    StudyState,
    UserRole,
    utcnow,
)
from integration.web.api.studies import worklist
from integration.web.deps import CurrentUser


@pytest.fixture(params=["postgresql", "sqlite"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("migrated_postgres_url"))
    url = f"sqlite:///{(tmp_path / 'priors.sqlite').as_posix()}"
    ensure_schema(url)
    return url


def a_header(study_uid: str, series_uid: str | None = None) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=generate_uid(),
        study_uid=study_uid,
        series_uid=series_uid or generate_uid(),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality="CT",
        body_part="CHEST",
        series_number=1,
        instance_number=1,
    )


def record(
    url: str, header: InstanceHeader, at: datetime, *, role: str = ROLE_CURRENT, site_id: int | None = None
) -> Receipt:
    with engine_for(url).connect() as connection:
        return record_instance(
            connection,
            header,
            storage_path=f"{header.study_uid}/{header.sop_instance_uid}.dcm",
            size_bytes=100,
            calling_ae="PACS",
            received_at=at,
            stable_seconds=2.0,
            site_id=site_id,
            any_site=role == ROLE_PRIOR,
            role=role,
        )


def searches(url: str) -> list[tuple[int, PriorSearchState, int]]:
    with session_scope(url) as session:
        rows = session.execute(select(PriorSearch.study_id, PriorSearch.state, PriorSearch.attempts)).all()
        return sorted((a, PriorSearchState(b), c) for a, b, c in rows)


def instance_count(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Instance)) or 0


def test_first_instance_opens_the_search_once(any_url: str) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    first = record(any_url, a_header(study_uid, series_uid), utcnow())
    second = record(any_url, a_header(study_uid, series_uid), utcnow())
    assert (first.added, first.new_study) == (True, True)
    assert (second.added, second.new_study) == (True, False)
    assert searches(any_url) == [(first.study_id, PriorSearchState.PENDING, 0)]
    with session_scope(any_url) as session:
        assert open_search(session, first.study_id, utcnow()) is False  # one search per study


def test_an_instance_sent_as_prior_joins_only_a_reserved_prior(any_url: str) -> None:
    now = utcnow()
    unknown = record(any_url, a_header(generate_uid()), now, role=ROLE_PRIOR)
    assert unknown.conflict is Conflict.NOT_REQUESTED and unknown.conflict.reason == "not a requested prior"
    current = record(any_url, a_header(generate_uid()), now)
    with session_scope(any_url) as session:
        current_uid = session.scalar(select(Study.study_uid).where(Study.id == current.study_id))
    assert current_uid is not None
    into_current = record(any_url, a_header(current_uid), now, role=ROLE_PRIOR)
    assert into_current.conflict is Conflict.NOT_REQUESTED
    assert instance_count(any_url) == 1

    prior_uid = generate_uid()
    with session_scope(any_url) as session:
        prior_id, held = reserve_prior_study(session, prior_uid, None, "PACS", now, patient_id="P1")
    assert held is False
    joined = record(any_url, a_header(prior_uid), now, role=ROLE_PRIOR)
    assert (joined.added, joined.study_id, joined.new_study) == (True, prior_id, False)
    assert [study_id for study_id, *_ in searches(any_url)] == [current.study_id]  # a prior has no search
    # an instance of an ordinary sender adds to the prior, which stays a prior
    assert record(any_url, a_header(prior_uid), now).added
    with session_scope(any_url) as session:
        assert session.scalar(select(Study.role).where(Study.id == prior_id)) == ROLE_PRIOR


def test_claims_take_pending_searches_once_and_expired_leases_again(migrated_postgres_url: str) -> None:
    url, now = migrated_postgres_url, utcnow()
    a = record(url, a_header(generate_uid()), now).study_id
    b = record(url, a_header(generate_uid()), now).study_id
    with session_scope(url) as session:
        assert claim_searches(session, now, limit=1, lease_seconds=60) == [a]
    with session_scope(url) as session:
        assert claim_searches(session, now, limit=5, lease_seconds=60) == [b]
        assert claim_searches(session, now + timedelta(seconds=30), lease_seconds=60) == []
    with session_scope(url) as session:
        finish_search(session, b, PriorSearchState.DONE, None, now)
    with session_scope(url) as session:  # the fetcher of a died: its lease ran out
        assert claim_searches(session, now + timedelta(seconds=61), lease_seconds=60) == [a]
    assert searches(url) == sorted([(a, PriorSearchState.RUNNING, 2), (b, PriorSearchState.DONE, 1)])
    with session_scope(url) as session, pytest.raises(ValueError, match="done or failed"):
        finish_search(session, a, PriorSearchState.PENDING, None, now)


def test_reserving_a_prior_is_idempotent_and_never_takes_a_current_study(migrated_postgres_url: str) -> None:
    url, now, uid = migrated_postgres_url, utcnow(), generate_uid()
    with session_scope(url) as session:
        first = reserve_prior_study(session, uid, None, "PACS", now, study_date="20240101", description="CT CHEST")
    with session_scope(url) as session:
        again = reserve_prior_study(session, uid, None, "PACS", now)
    assert first[0] == again[0] and (first[1], again[1]) == (False, False)  # reserved, nothing stored yet
    record(url, a_header(uid), now, role=ROLE_PRIOR)
    with session_scope(url) as session:
        assert reserve_prior_study(session, uid, None, "PACS", now) == (first[0], True)
        study = session.get(Study, first[0])
        assert study is not None
        assert (study.role, study.study_date, study.study_description) == (ROLE_PRIOR, "20240101", "CT CHEST")
        with pytest.raises(PriorStudyNotDrafted, match="prior study is not drafted"):
            request_second_opinion(
                session, study, model_name=None, prompt_name=None, stat=False, requested_by="admin", queue="analysis"
            )

    current = record(url, a_header(generate_uid()), now)
    with session_scope(url) as session:
        current_uid = session.scalar(select(Study.study_uid).where(Study.id == current.study_id))
        assert current_uid is not None
        assert reserve_prior_study(session, current_uid, None, "PACS", now) == (current.study_id, True)
        assert session.scalar(select(Study.role).where(Study.id == current.study_id)) == ROLE_CURRENT


def _held(session: Session, uid: str, patient_id: str, issuer: str | None, site_id: int | None, date: str) -> int:
    study_id, _ = reserve_prior_study(session, uid, site_id, "PACS", utcnow(), patient_id=patient_id, issuer=issuer)
    session.execute(update(Study).where(Study.id == study_id).values(study_date=date))
    return study_id


def test_local_candidates_match_patient_id_and_issuer_at_the_site(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    with session_scope(url) as session:
        site = Site(code="A", name="Site A")
        other_site = Site(code="B", name="Site B")
        session.add_all([site, other_site])
        session.flush()
        current = _held(session, "1.2.1", "P1", "HOSP", site.id, "20250101")
        older = _held(session, "1.2.2", "P1", "HOSP", site.id, "20230101")
        newer = _held(session, "1.2.3", "P1", "HOSP", site.id, "20240101")
        _held(session, "1.2.4", "P1", "OTHER", site.id, "20240601")  # same ID, another issuer: another patient
        _held(session, "1.2.5", "P1", None, site.id, "20240601")  # no issuer: not the same as HOSP's
        _held(session, "1.2.6", "P2", "HOSP", site.id, "20240601")  # another ID (maybe the same name)
        _held(session, "1.2.7", "P1", "HOSP", other_site.id, "20240601")  # another site
        session.execute(update(Study).where(Study.id == newer).values(role=ROLE_CURRENT))
    assert record(url, a_header("1.2.3"), utcnow(), site_id=site.id).added
    with session_scope(url) as session:
        found = local_candidates(session, "P1", "HOSP", site.id, current)
        assert [(c.study_id, c.study_date, c.role) for c in found] == [
            (newer, "20240101", ROLE_CURRENT),
            (older, "20230101", ROLE_PRIOR),
        ]
        assert (found[0].modalities, found[0].body_parts, found[0].instances) == (("CT",), ("CHEST",), 1)
        assert (found[0].issuer, found[0].has_signed_report, found[0].source) == ("HOSP", False, "local")
        no_issuer = local_candidates(session, "P1", None, site.id, None)
        assert [c.study_uid for c in no_issuer] == ["1.2.5"]
        assert local_candidates(session, "", None, site.id, None) == []


def _job_count(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(AnalysisJob)) or 0


def test_a_study_waits_for_its_prior_search_until_done_or_the_deadline(migrated_postgres_url: str) -> None:
    url, start = migrated_postgres_url, utcnow() - timedelta(seconds=100)
    waiting = record(url, a_header(generate_uid()), start).study_id
    finished = record(url, a_header(generate_uid()), start).study_id
    prior_uid = generate_uid()
    with session_scope(url) as session:
        reserve_prior_study(session, prior_uid, None, "PACS", start)
    record(url, a_header(prior_uid), start, role=ROLE_PRIOR)
    stable = start + timedelta(seconds=2)
    with session_scope(url) as session:
        assert complete_stable_studies(session, stable + timedelta(seconds=1), "q", prior_wait_seconds=30) == []
        finish_search(session, finished, PriorSearchState.DONE, None, stable)
    with session_scope(url) as session:
        assert len(complete_stable_studies(session, stable + timedelta(seconds=1), "q", prior_wait_seconds=30)) == 1
    with session_scope(url) as session:
        assert complete_stable_studies(session, stable + timedelta(seconds=29), "q", prior_wait_seconds=30) == []
    with session_scope(url) as session:
        assert len(complete_stable_studies(session, stable + timedelta(seconds=30), "q", prior_wait_seconds=30)) == 1
        states = dict(session.execute(select(Study.id, Study.state)).all())
    assert states[waiting] == states[finished] == StudyState.STABLE
    with session_scope(url) as session:  # the prior never gets a job, however long it waits
        assert complete_stable_studies(session, utcnow() + timedelta(days=1), "q") == []
    assert _job_count(url) == 2


def test_a_prior_is_on_no_worklist_and_its_view_lists_its_files(migrated_postgres_url: str) -> None:
    url, now = migrated_postgres_url, utcnow()
    current = record(url, a_header(generate_uid()), now)
    prior_uid, series_uid = generate_uid(), generate_uid()
    with session_scope(url) as session:
        prior_id, _ = reserve_prior_study(session, prior_uid, None, "PACS", now)
        record_prior(session, current.study_id, "9.9.9", source="pacs", now=now, state=PriorState.UNAVAILABLE)
        row = record_prior(
            session,
            current.study_id,
            prior_uid,
            source="pacs",
            now=now,
            prior_study_id=prior_id,
            state=PriorState.FETCHING,
            series_uids=[series_uid],
            description="x" * 100,
        )
        assert record_prior(session, current.study_id, "9.9.9", source="pacs", now=now, rank=2) != row
    record(url, a_header(prior_uid, series_uid), now, role=ROLE_PRIOR)
    record(url, a_header(prior_uid), now, role=ROLE_PRIOR)  # another series, not chosen
    with session_scope(url) as session:
        update_prior(session, row, state=PriorState.READY, report_text="No change.", report_source="sr", instances=1)
        with pytest.raises(TypeError):
            update_prior(session, row, study_id=5)
    with session_scope(url) as session:
        view = priors_view(session, current.study_id)
        admin = CurrentUser(1, "admin", UserRole.ADMIN, None)
        assert [r.study_uid for r in worklist(session, admin)] == [
            session.scalar(select(Study.study_uid).where(Study.id == current.study_id))
        ]
        assert prior_uid not in {s.study_uid for s in study_summaries(session)}
        assert [s.study_uid for s in study_summaries(session, study_uids=[prior_uid])] == [prior_uid]
    assert view.search_state is PriorSearchState.PENDING
    first, second = view.priors
    assert (first.prior_study_uid, first.state, first.report_text, first.report_source) == (
        prior_uid,
        PriorState.READY,
        "No change.",
        "sr",
    )
    assert first.description == "x" * 64 and first.series_uids == (series_uid,)
    assert [f.series_uid for f in first.files] == [series_uid]
    assert (second.prior_study_uid, second.rank, second.files) == ("9.9.9", 2, ())
    assert view.ready == (first,)
