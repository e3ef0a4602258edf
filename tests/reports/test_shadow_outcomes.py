"""Shadow drafts measured against the signed report, on PostgreSQL: at signing, after it, once per pair.

The rows are written by the real store functions the worker and the review use (ingest, the rule's jobs,
claim, record draft, signed version, signed outcome); only the SR file of the signature is not written
(its path is a name), as in ``tests/store/test_priority.py``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from integration.imaging.routing import RoutingRule
from integration.intake.rule_jobs import rule_job_maker
from integration.reports.review import add_signed_outcome
from integration.reports.shadow import compare_late_shadow
from integration.store.jobs import complete_stable_studies, mark_sent
from integration.store.opinions import BUILTIN_PROMPT_NAMES, DuplicateOpinion, request_second_opinion
from integration.store.reports import SkippedJob, claim_job, fail_job, record_draft
from integration.store.revisions import SignedVersion, next_version, record_signed_version
from integration.store.session import engine_for, session_scope
from integration.store.shadow_tables import ShadowOutcome
from integration.store.tables import AnalysisJob, Report, Study, StudyState, utcnow
from integration.web.ops.shadow_metrics import shadow_metrics
from tests.support.order_store import a_draft, ingest

RULE = RoutingRule(name="ct-shadow", modality="CT", shadow_prompt="general")
SIGNED = {
    "findings": [{"text": "Right lower lobe consolidation."}, {"text": "Small left pleural effusion."}],
    "impression": "Right lower lobe pneumonia.",
}
SHADOW = {
    "findings": [{"text": "Right lower lobe consolidation."}, {"text": "Cardiomegaly."}],
    "impression": "Right lower lobe pneumonia.",
}


def jobs_made(url: str) -> tuple[int, int]:
    """Complete the study with the shadow rule's jobs and claim both; return (primary, shadow) job ids."""
    maker = rule_job_maker(
        [RULE], queue="analysis", stat_queue="analysis.stat", models=(), prompts=BUILTIN_PROMPT_NAMES, now=utcnow()
    )
    with session_scope(url) as session:
        primary, shadow = complete_stable_studies(session, utcnow() + timedelta(hours=1), "analysis", make_jobs=maker)
    for job_id in (primary, shadow):
        with session_scope(url) as session:
            mark_sent(session, job_id, utcnow())
        with session_scope(url) as session:
            assert not isinstance(claim_job(session, job_id, max_attempts=3, now=utcnow()), SkippedJob)
    return primary, shadow


def draft(url: str, job_id: int, prompt_version: str, document: dict[str, Any]) -> int:
    record = replace(a_draft(), prompt_version=prompt_version, findings=document, text=str(document["impression"]))
    with session_scope(url) as session:
        return record_draft(session, job_id, record, utcnow())


def sign(url: str, report_id: int) -> int:
    """Store a signed version with its outcome, as signing does; return the revision id."""
    with session_scope(url) as session:
        version = next_version(session, report_id)
        revision_id = record_signed_version(
            session,
            SignedVersion(
                report_id=report_id,
                version=version,
                findings=SIGNED,
                text="Right lower lobe pneumonia.",
                author="Doe^John",
                organization="North",
                signed_at=utcnow(),
                sr_sop_instance_uid=generate_uid(),
                sr_series_uid=generate_uid(),
                sr_path=f"sr/{report_id}-{version}.dcm",
            ),
        )
        report = session.get(Report, report_id)
        assert report is not None
        add_signed_outcome(session, report, revision_id, actor="doe")
        return revision_id


def outcomes(url: str) -> list[tuple[Any, ...]]:
    with session_scope(url) as session:
        rows = session.execute(
            select(
                ShadowOutcome.report_id,
                ShadowOutcome.revision_id,
                ShadowOutcome.prompt_version,
                ShadowOutcome.draft_findings,
                ShadowOutcome.accepted,
                ShadowOutcome.edited,
                ShadowOutcome.rejected,
                ShadowOutcome.added,
            ).order_by(ShadowOutcome.id)
        ).all()
        return [tuple(row) for row in rows]


def study_state(url: str, study_id: int) -> StudyState:
    with session_scope(url) as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study.state


def test_signing_the_primary_measures_the_shadow_draft_and_a_shadow_never_moves_its_study(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    study_id = ingest(url, received_at=utcnow() - timedelta(minutes=5))
    primary_job, shadow_job = jobs_made(url)
    shadow = draft(url, shadow_job, "general/v3", SHADOW)  # the candidate answers first
    assert study_state(url, study_id) is StudyState.RUNNING  # not drafted by a shadow
    primary = draft(url, primary_job, "ct/v1", SIGNED)
    assert study_state(url, study_id) is StudyState.DRAFTED
    with session_scope(url) as session, pytest.raises(DuplicateOpinion, match="in shadow mode") as refused:
        study = session.get(Study, study_id)
        assert study is not None
        request_second_opinion(
            session, study, model_name=None, prompt_name="general", stat=False, requested_by="dr", queue="analysis"
        )
    assert str(shadow) not in str(refused.value)  # the hidden draft is not named
    with session_scope(url) as session:  # a second opinion is never measured as a shadow
        study = session.get(Study, study_id)
        assert study is not None
        opinion_job = request_second_opinion(
            session, study, model_name=None, prompt_name="mr", stat=False, requested_by="dr", queue="analysis"
        )
    with session_scope(url) as session:
        assert not isinstance(claim_job(session, opinion_job, max_attempts=3, now=utcnow()), SkippedJob)
    draft(url, opinion_job, "mr/v1", SHADOW)

    revision = sign(url, primary)
    assert outcomes(url) == [(shadow, revision, "general/v3", 2, 1, 0, 1, 1)]
    assert study_state(url, study_id) is StudyState.SIGNED
    with session_scope(url) as session:  # the shadow stays a draft: never signed, never the report of record
        assert session.scalar(select(Report.status).where(Report.id == shadow)).value == "draft"
        assert compare_late_shadow(session, shadow) is False  # compared already: no second row
    assert len(outcomes(url)) == 1

    with engine_for(url).connect() as connection:
        families = {family.name: family for family in shadow_metrics(connection)}
    labels = {"model_id": "smoke/llava", "model_revision": "abc", "prompt_version": "general/v3"}
    [count] = families["pacsvlm_shadow_outcomes"].samples[:1]
    assert count.labels == labels and count.value == 1
    [agreement] = families["pacsvlm_shadow_finding_agreement_ratio"].samples
    assert agreement.labels == labels and agreement.value == 1 / 3  # one shared finding of three in either
    fates = {s.labels["fate"]: s.value for s in families["pacsvlm_shadow_findings"].samples}
    assert fates == {"accepted": 1, "edited": 0, "rejected": 1, "added": 1}
    [similarity] = families["pacsvlm_shadow_text_similarity_mean"].samples
    assert 0.0 < similarity.value <= 1.0


def test_a_shadow_drafted_after_the_signature_is_compared_when_it_is_drafted(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    study_id = ingest(url, received_at=utcnow() - timedelta(minutes=5))
    primary_job, shadow_job = jobs_made(url)
    revision = sign(url, draft(url, primary_job, "ct/v1", SIGNED))
    assert outcomes(url) == []
    shadow = draft(url, shadow_job, "general/v3", SHADOW)
    with session_scope(url) as session:  # what the analysis task does after recording a shadow draft
        assert compare_late_shadow(session, shadow) is True
    with session_scope(url) as session:
        assert compare_late_shadow(session, shadow) is False
    assert outcomes(url) == [(shadow, revision, "general/v3", 2, 1, 0, 1, 1)]
    assert study_state(url, study_id) is StudyState.SIGNED


def test_a_failed_shadow_job_fails_no_study(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    study_id = ingest(url, received_at=utcnow() - timedelta(minutes=5))
    primary_job, shadow_job = jobs_made(url)
    with session_scope(url) as session:
        fail_job(session, shadow_job, "the candidate crashed", utcnow())
    assert study_state(url, study_id) is StudyState.RUNNING
    with session_scope(url) as session:
        assert session.get(AnalysisJob, shadow_job).state.value == "failed"  # type: ignore[union-attr]
    draft(url, primary_job, "ct/v1", SIGNED)
    assert study_state(url, study_id) is StudyState.DRAFTED
