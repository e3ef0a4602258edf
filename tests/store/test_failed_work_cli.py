"""``pacs-vlm studies list --state``, ``jobs list``, ``studies retry`` and ``studies reanalyze`` on PostgreSQL.

Why: an operator finds and retries failed work from a shell; each action is audited with the operator as
the actor, and every refusal is one line without a traceback.  The commands run in-process (typer's runner)
on a migrated database and a real Redis broker.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, AuditEvent, JobState, Site, Study, StudyState
from worker.cli import app

WHEN = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def add_study(url: str, uid: str, state: StudyState, site: str, error: str | None = None) -> None:
    with session_scope(url) as session:
        site_row = session.scalar(select(Site).where(Site.code == site))
        if site_row is None:
            site_row = Site(code=site, name=site)
            session.add(site_row)
            session.flush()
        study = Study(
            study_uid=uid,
            state=state,
            calling_ae="CT1",
            first_received_at=WHEN,
            last_received_at=WHEN,
            stable_after=WHEN,
            updated_at=WHEN,
            site_id=site_row.id,
        )
        session.add(study)
        session.flush()
        job_state = JobState.FAILED if state is StudyState.FAILED else JobState.DONE
        session.add(
            AnalysisJob(
                study_id=study.id,
                study_version=1,
                queue="analysis",
                state=job_state,
                attempts=3,
                last_error=error,
                created_at=WHEN,
                finished_at=WHEN + timedelta(minutes=1),
            )
        )


@pytest.fixture
def env(migrated_postgres_url: str, redis_url: str) -> dict[str, str]:
    add_study(migrated_postgres_url, "1.2.3.1", StudyState.FAILED, "NORTH", "gave up: [bold]CUDA[/bold] out of memory")
    add_study(migrated_postgres_url, "1.2.3.2", StudyState.FAILED, "SOUTH", "worker lost")
    add_study(migrated_postgres_url, "1.2.3.3", StudyState.DRAFTED, "NORTH")
    return {
        "PACSVLM_DATABASE_URL": migrated_postgres_url,
        "PACSVLM_BROKER_URL": redis_url,
        "PACSVLM_MODELS": '{"medgemma-4b": "/models/medgemma-4b"}',
        "COLUMNS": "250",
        "USER": "operator1",
    }


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_lists_by_state_site_and_date(env: dict[str, str]) -> None:
    code, out = run(env, "studies", "list", "--state", "failed")
    assert code == 0 and "1.2.3.1" in out and "1.2.3.2" in out and "1.2.3.3" not in out
    assert "[bold]CUDA[/bold] out of memory" in out  # stored text, never markup
    code, out = run(env, "studies", "list", "--state", "failed", "--site", "SOUTH")
    assert code == 0 and "1.2.3.2" in out and "1.2.3.1" not in out
    code, out = run(env, "studies", "list", "--since", "2099-01-01")
    assert code == 0 and "1.2.3." not in out
    code, out = run(env, "studies", "list", "--limit", "1")
    assert code == 0 and out.count("1.2.3.") == 1
    code, out = run(env, "jobs", "list", "--state", "failed", "--site", "NORTH")
    assert code == 0 and "1.2.3.1" in out and "1.2.3.2" not in out
    code, out = run(env, "jobs", "list", "--state", "done")
    assert code == 0 and "1.2.3.3" in out and "1.2.3.1" not in out
    for args in (("studies", "list", "--state", "lost"), ("jobs", "list", "--state", "lost")):
        code, out = run(env, *args)
        assert code == 2 and "unknown state" in out
    code, out = run(env, "jobs", "list", "--since", "yesterday")
    assert code == 2 and "not a date" in out


def test_retry_and_reanalyze_are_audited_with_the_operator(env: dict[str, str]) -> None:
    url = env["PACSVLM_DATABASE_URL"]
    code, out = run(env, "studies", "retry", "1.2.3.1")
    assert code == 0 and "analysis queued again as job" in out
    code, out = run(env, "studies", "retry", "1.2.3.1")
    assert code == 1 and "not failed" in out
    code, out = run(env, "studies", "retry", "9.9.9")
    assert code == 1 and "no such study" in out
    code, out = run(env, "studies", "reanalyze", "1.2.3.2", "--model", "medgemma-4b", "--prompt", "general", "--stat")
    assert code == 0 and "primary analysis queued again" in out
    code, out = run(env, "studies", "reanalyze", "1.2.3.3", "--model", "medgemma-4b")
    assert code == 0 and "second opinion queued" in out
    code, out = run(env, "studies", "reanalyze", "1.2.3.3", "--model", "nope")
    assert code == 1 and "unknown model" in out
    with session_scope(url) as session:
        events = session.execute(
            select(AuditEvent.actor, AuditEvent.action, AuditEvent.object_id)
            .where(AuditEvent.action.in_(["study.retry", "study.reanalyze", "opinion.requested"]))
            .order_by(AuditEvent.id)
        ).all()
        assert [tuple(event) for event in events] == [
            ("cli:operator1", "study.retry", "1.2.3.1"),
            ("cli:operator1", "study.reanalyze", "1.2.3.2"),
            ("cli:operator1", "opinion.requested", "1.2.3.3"),
        ]
        states = dict(session.execute(select(Study.study_uid, Study.state)).all())
        assert states == {
            "1.2.3.1": StudyState.QUEUED,
            "1.2.3.2": StudyState.QUEUED,
            "1.2.3.3": StudyState.DRAFTED,
        }  # sent
        jobs = session.execute(
            select(AnalysisJob.model_name, AnalysisJob.prompt_name, AnalysisJob.purpose, AnalysisJob.queue)
            .where(AnalysisJob.state == JobState.QUEUED)
            .order_by(AnalysisJob.id)
        ).all()
        assert [tuple(job) for job in jobs] == [
            (None, None, "primary", "analysis"),
            ("medgemma-4b", "general", "primary", "analysis.stat"),
            ("medgemma-4b", None, "second_opinion", "analysis"),
        ]
