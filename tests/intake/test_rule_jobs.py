"""A routing rule decides a stable study's analysis: model, prompt, priority, skip and shadow (PostgreSQL, Redis)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy import select

from integration.config import Settings
from integration.imaging.routing import DEFAULT_RULES, RoutingRule, rule_for_study, rules_led_by
from integration.intake.assembly import StudyAssembler
from integration.intake.header import InstanceHeader
from integration.store.ingest import record_instance
from integration.store.priority import settle_priority
from integration.store.retries import failure_of
from integration.store.session import engine_for, session_scope
from integration.store.tables import AnalysisJob, AuditEvent, JobState, Study, StudyState, utcnow
from integration.store.work import WorkFilter, skip_reason, skipped_studies
from tests.support.records import queued_messages

CALLING_AE = "CT1"
RULES = [
    {"name": "mr-skip", "modality": "MR", "skip": True},
    {
        "name": "ct-head-stat",
        "modality": "CT",
        "body_part": "HEAD",
        "model": "primary-model",
        "prompt": "ct-head",
        "priority": "stat",
        "shadow_model": "candidate",
        "shadow_prompt": "general",
    },
    {"name": "ct-ghost", "modality": "CT", "body_part": "CHEST", "model": "ghost"},
    {"name": "ct", "modality": "CT"},
]


@pytest.fixture
def settings(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=migrated_postgres_url,
        broker_url=redis_url,
        data_dir=tmp_path,
        stable_seconds=1,
        calling_aes={CALLING_AE: {}},
        routing_rules=RULES,
        models={"primary-model": tmp_path, "candidate": tmp_path},
    )


def stable_study(settings: Settings, modality: str, body_part: str | None) -> str:
    """Record one instance received a minute ago, as the listener does; return the study UID."""
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    header = InstanceHeader(
        sop_class_uid=MRImageStorage if modality == "MR" else CTImageStorage,
        sop_instance_uid=sop_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality=modality,
        body_part=body_part,
        series_number=1,
        instance_number=1,
    )
    with engine_for(settings.database_url).connect() as connection:
        record_instance(
            connection,
            header,
            storage_path=f"{study_uid}/{series_uid}/{sop_uid}.dcm",
            size_bytes=100,
            calling_ae=CALLING_AE,
            received_at=utcnow() - timedelta(seconds=60),
            stable_seconds=1,
        )
    return study_uid


def jobs_of(settings: Settings, study_uid: str) -> list[tuple[object, ...]]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(
                AnalysisJob.purpose,
                AnalysisJob.model_name,
                AnalysisJob.prompt_name,
                AnalysisJob.priority,
                AnalysisJob.queue,
                AnalysisJob.state,
                AnalysisJob.requested_by,
            )
            .join(Study, AnalysisJob.study_id == Study.id)
            .where(Study.study_uid == study_uid)
            .order_by(AnalysisJob.id)
        ).all()
    return [tuple(row) for row in rows]


def job_ids(settings: Settings, study_uid: str) -> list[int]:
    with session_scope(settings.database_url) as session:
        query = select(AnalysisJob.id).join(Study, AnalysisJob.study_id == Study.id).where(Study.study_uid == study_uid)
        return list(session.scalars(query.order_by(AnalysisJob.id)))


def study_of(settings: Settings, study_uid: str) -> tuple[StudyState, str]:
    with session_scope(settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        return study.state, study.priority


def test_the_rule_gives_the_jobs_model_prompt_priority_and_a_shadow(settings: Settings) -> None:
    head = stable_study(settings, "CT", "HEAD")
    plain = stable_study(settings, "CT", "ABDOMEN")
    result = StudyAssembler(settings).run_once()
    assert (result.jobs_created, result.sent) == (3, 3)

    assert jobs_of(settings, head) == [
        ("primary", "primary-model", "ct-head", "stat", "analysis.stat", JobState.QUEUED, "rule:ct-head-stat"),
        ("shadow", "candidate", "general", "routine", "analysis", JobState.QUEUED, "rule:ct-head-stat"),
    ]
    assert study_of(settings, head) == (StudyState.QUEUED, "stat")
    # a rule that chooses nothing leaves the job as before: default model, prompt by modality, routine
    assert jobs_of(settings, plain) == [("primary", None, None, "routine", "analysis", JobState.QUEUED, None)]
    assert study_of(settings, plain) == (StudyState.QUEUED, "routine")
    assert len(queued_messages(settings.broker_url)) == 2  # the shadow and the plain study's primary
    [stat] = queued_messages(settings.broker_url, "analysis.stat")
    assert stat["args"] == [job_ids(settings, head)[0]]

    with session_scope(settings.database_url) as session:  # the stat rule keeps the study stat until signed
        study = session.scalars(select(Study).where(Study.study_uid == head)).one()
        session.execute(
            AnalysisJob.__table__.update().where(AnalysisJob.study_id == study.id).values(state=JobState.DONE)
        )
        assert settle_priority(session, study, utcnow()) == "stat"


def test_a_skip_rule_ends_the_study_skipped_without_a_job_and_says_which_rule(settings: Settings) -> None:
    skipped = stable_study(settings, "MR", "KNEE")
    assert StudyAssembler(settings).run_once().jobs_created == 0
    assert jobs_of(settings, skipped) == []
    assert study_of(settings, skipped) == (StudyState.SKIPPED, "routine")
    assert queued_messages(settings.broker_url) == []
    with session_scope(settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == skipped)).one()
        assert skip_reason(session, study) == "skipped by rule mr-skip"
        assert failure_of(session, study) is None  # not an error
        [row] = skipped_studies(session, WorkFilter())
        assert (row.study_uid, row.reason) == (skipped, "skipped by rule mr-skip")
        events = session.scalars(select(AuditEvent.action).where(AuditEvent.object_id == skipped)).all()
    assert events == ["study.skipped"]
    assert StudyAssembler(settings).run_once().jobs_created == 0  # a second pass leaves it skipped


def test_a_rule_naming_an_unknown_model_fails_the_study_clearly(settings: Settings) -> None:
    chest = stable_study(settings, "CT", "CHEST")
    assert StudyAssembler(settings).run_once().jobs_created == 0
    [(purpose, model, _prompt, _priority, _queue, state, _by)] = jobs_of(settings, chest)
    assert (purpose, model, state) == ("primary", "ghost", JobState.FAILED)
    assert study_of(settings, chest)[0] is StudyState.FAILED
    assert queued_messages(settings.broker_url) == []  # never sent to the default model instead
    with session_scope(settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == chest)).one()
        failure = failure_of(session, study)
    assert failure is not None
    assert failure.reason == "routing rule 'ct-ghost' names model 'ghost', which is not configured"


def test_rule_fields_are_checked() -> None:
    with pytest.raises(ValidationError, match="skips its studies: it cannot also name model, shadow_model"):
        RoutingRule(name="x", skip=True, model="a", shadow_model="b")
    with pytest.raises(ValidationError, match="priority stat"):
        RoutingRule(name="x", skip=True, priority="stat")
    with pytest.raises(ValidationError, match="shadow model and prompt are the primary's own"):
        RoutingRule(name="x", model="a", shadow_model="a")
    with pytest.raises(ValidationError, match="priority"):
        RoutingRule(name="x", priority="urgent")  # type: ignore[arg-type]
    assert RoutingRule(name="x", shadow_prompt="general").has_shadow
    assert not RoutingRule(name="x").has_shadow


def test_the_worker_and_the_intake_ask_one_function_for_the_rule() -> None:
    rules = [RoutingRule.model_validate(rule) for rule in RULES]
    series = [("CT", ("SCOUT",)), ("CT", ("HEAD",))]
    rule = rule_for_study(rules, series, CALLING_AE)
    assert rule is not None and rule.name == "ct-head-stat"
    assert [r.name for r in rules_led_by(rule, rules)] == ["ct-head-stat", "mr-skip", "ct-ghost", "ct"]
    assert rule_for_study(None, [("CT", ("CHEST",))], None) is DEFAULT_RULES[0]
    assert rules_led_by(None, None) == DEFAULT_RULES
