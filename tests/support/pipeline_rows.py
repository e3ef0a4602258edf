"""Studies, jobs, drafts, signatures and critical alerts with known timestamps, for the stage-latency metrics.

Three studies from :data:`T0` on: A (first instance to stable 45 s, sent 0.3 s later, drafted by ``r1`` 100 s
later, signed 1000 s after the draft, its critical alert acknowledged 200 s after it was raised, and a retried
job sent 2 s after its row), B (20 s, 3 s, drafted by ``r2`` 4000 s later, a rejected version and an open
critical alert) and C (50 s to stable, its job still queued).  A hand-written report comes last and is no
model draft.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from integration.store.alert_tables import AlertState, CriticalAlert
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    JobState,
    Report,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    Study,
    StudyState,
)

T0 = datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)
MODEL = "tiny-vlm"
PROMPT = "cxr/v1"
#: When each model's draft was written: r2's is the newest draft.
DRAFTED_AT = {"r1": T0 + timedelta(seconds=145.3), "r2": T0 + timedelta(seconds=4023)}
#: When B's critical alert (still open) was raised.
OPEN_ALERT_RAISED_AT = T0 + timedelta(seconds=4030)
#: When C's job (still queued) was created.
QUEUED_JOB_CREATED_AT = T0 + timedelta(seconds=50)


def _seconds(n: float) -> datetime:
    return T0 + timedelta(seconds=n)


def _report(study: Study, job: AnalysisJob | None, revision: str, at: datetime, *, by_model: bool = True) -> Report:
    return Report(
        study_id=study.id,
        job_id=job.id if job else None,
        study_version=1,
        status=ReportStatus.SIGNED if revision == "r1" else ReportStatus.DRAFT,
        ai_generated=by_model,
        model_id=MODEL if by_model else "manual",
        model_revision=revision,
        model_family="llava",
        prompt_version=PROMPT,
        structured=True,
        findings={"findings": [], "impression": "", "limitations": ""},
        text="",
        raw_output="{}",
        evidence=[],
        timings={},
        tokens_in=1,
        tokens_out=1,
        created_at=at,
    )


def add_pipeline_rows(database_url: str) -> None:
    """Write the three studies (see the module's description) into a migrated database."""
    with session_scope(database_url) as session:
        studies = {
            name: Study(
                study_uid=f"1.2.826.0.1.{index}",
                state=state,
                calling_ae="CT1",
                first_received_at=T0,
                last_received_at=T0,
                stable_after=T0,
            )
            for index, (name, state) in enumerate(
                (("A", StudyState.SIGNED), ("B", StudyState.DRAFTED), ("C", StudyState.STABLE)), start=1
            )
        }
        session.add_all(studies.values())
        session.flush()

        def job(study: str, created: float, sent: float | None, state: JobState) -> AnalysisJob:
            row = AnalysisJob(
                study_id=studies[study].id,
                study_version=1,
                state=state,
                queue="analysis",
                created_at=_seconds(created),
                sent_at=None if sent is None else _seconds(sent),
            )
            session.add(row)
            return row

        job_a = job("A", 45, 45.3, JobState.DONE)
        job("A", 10000, 10002, JobState.FAILED)  # a retry: a later row, not the study's first stable
        job_b = job("B", 20, 23, JobState.DONE)
        job("C", 50, None, JobState.QUEUED)
        session.flush()
        draft_a = _report(studies["A"], job_a, "r1", DRAFTED_AT["r1"])
        draft_b = _report(studies["B"], job_b, "r2", DRAFTED_AT["r2"])
        by_hand = _report(studies["C"], None, "none", _seconds(20000), by_model=False)
        session.add_all([draft_a, draft_b, by_hand])
        session.flush()
        version = {"findings": {}, "text": "", "author": "Doe^Jane", "organization": "H"}
        session.add_all(
            [
                ReportRevision(
                    report_id=draft_a.id,
                    version=2,
                    status=RevisionStatus.SIGNED,
                    created_at=DRAFTED_AT["r1"] + timedelta(seconds=1000),
                    **version,
                ),
                ReportRevision(  # an amendment later: the first signature counts
                    report_id=draft_a.id,
                    version=3,
                    status=RevisionStatus.SIGNED,
                    created_at=DRAFTED_AT["r1"] + timedelta(days=3),
                    **version,
                ),
                ReportRevision(
                    report_id=draft_b.id,
                    version=2,
                    status=RevisionStatus.REJECTED,
                    created_at=DRAFTED_AT["r2"] + timedelta(seconds=60),
                    **version,
                ),
                CriticalAlert(
                    report_id=draft_a.id,
                    study_id=studies["A"].id,
                    state=AlertState.ACKNOWLEDGED,
                    raised_at=DRAFTED_AT["r1"] + timedelta(seconds=1),
                    acknowledged_by="Doe^Jane",
                    acknowledged_at=DRAFTED_AT["r1"] + timedelta(seconds=201),
                ),
                CriticalAlert(
                    report_id=draft_b.id,
                    study_id=studies["B"].id,
                    state=AlertState.OPEN,
                    raised_at=OPEN_ALERT_RAISED_AT,
                ),
            ]
        )
