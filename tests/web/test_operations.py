"""``pacs-vlm api`` operations endpoints on real sockets: /health and /metrics.

The API runs as a subprocess (``python -m worker.cli api``) against real PostgreSQL and Redis, or the
embedded defaults; rows are written through the ORM into the same database and the next scrape shows them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from integration.config import Settings
from integration.queue import send_analyze_study
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    Delivery,
    Instance,
    JobState,
    Report,
    ReportRevision,
    ReportStatus,
    ReviewOutcome,
    RevisionStatus,
    Series,
    Site,
    Study,
    StudyState,
    utcnow,
)
from integration.web.ops.health import CheckOutcome, run_checks
from tests.support.services import free_port
from tests.web.conftest import ApiProcess, run_api

REPO = Path(__file__).resolve().parents[2]
CHECKS = {"database", "broker", "storage", "disk"}


@pytest.fixture
def production_env(migrated_postgres_url: str, redis_url: str) -> dict[str, str]:
    return {"PACSVLM_DATABASE_URL": migrated_postgres_url, "PACSVLM_BROKER_URL": redis_url}


def test_health_passes_on_postgres_redis_and_storage(
    start_api: Callable[..., ApiProcess], production_env: dict[str, str]
) -> None:
    api = start_api(**production_env)
    response = api.get("/health")
    assert response.status_code == 200, response.text
    assert response.headers["x-content-type-options"] == "nosniff"  # every answer, JSON included
    body = response.json()
    assert body["status"] == "ok" and body["failing"] == []
    assert set(body["checks"]) == CHECKS
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["database"]["detail"] == "postgresql answered SELECT 1"
    assert body["checks"]["broker"]["detail"] == "redis answered PING"
    assert body["checks"]["disk"]["free_bytes"] > 0 and body["checks"]["disk"]["min_free_bytes"] == 0
    assert response.headers["cache-control"] == "no-store"
    assert "://" not in response.text  # no URLs (and so no credentials) in the answer


def test_health_fails_on_low_disk_headroom(
    start_api: Callable[..., ApiProcess], production_env: dict[str, str]
) -> None:
    api = start_api(**production_env, PACSVLM_MIN_FREE_BYTES=str(10**18))
    response = api.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail" and body["failing"] == ["disk"]
    disk = body["checks"]["disk"]
    assert not disk["ok"] and disk["min_free_bytes"] == 10**18 and 0 < disk["free_bytes"] < 10**18


def test_unreachable_broker_fails_health_quickly_and_metrics_still_answer(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str
) -> None:
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    response = api.get("/health")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert "Connection" in body["checks"]["broker"]["detail"]
    assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]

    started = time.monotonic()
    samples = api.samples()
    assert time.monotonic() - started < 5
    assert samples[("pacsvlm_broker_up", ())] == 0
    assert samples[("pacsvlm_queue_depth", (("queue", "analysis"),))] == -1
    assert samples[("pacsvlm_queue_depth", (("queue", "delivery"),))] == -1
    assert samples[("pacsvlm_database_up", ())] == 1


def draft_content(impression: str, problems: list[str]) -> dict[str, Any]:
    return {
        "findings": [{"text": "No focal consolidation.", "images": [1, 2]}],
        "impression": impression,
        "limitations": "",
        "structured": True,
        "problems": problems,
    }


def add_reviewed_study(database_url: str) -> None:
    """A drafted study: one instance, a done job (42 s), a draft, an unedited and an edited signature."""
    now = utcnow()
    with session_scope(database_url) as session:
        study = Study(
            study_uid="1.2.3.4",
            state=StudyState.DRAFTED,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
        )
        series = Series(series_uid="1.2.3.4.1", study=study, modality="CT")
        session.add_all([study, series])
        session.flush()
        session.add(
            Instance(
                sop_instance_uid="1.2.3.4.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                series_id=series.id,
                study_version=1,
                storage_path="1.2.3.4/1.2.3.4.1/1.2.3.4.1.1.dcm",
                size_bytes=1000,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                calling_ae="CT1",
                received_at=now,
            )
        )
        job = AnalysisJob(
            study_id=study.id,
            study_version=1,
            state=JobState.DONE,
            queue="analysis",
            started_at=now - timedelta(seconds=42),
            finished_at=now,
        )
        session.add(job)
        session.flush()
        report = Report(
            study_id=study.id,
            job_id=job.id,
            study_version=1,
            status=ReportStatus.SIGNED,
            model_id="tiny",
            model_revision="r1",
            model_family="llava",
            prompt_version="ct-chest/v1",
            structured=True,
            findings=draft_content("Normal chest CT.", ["an image reference was dropped"]),
            text="draft",
            raw_output="{}",
            evidence=[],
            timings={},
            tokens_in=10,
            tokens_out=5,
        )
        session.add(report)
        session.flush()
        signed = {"report_id": report.id, "status": RevisionStatus.SIGNED, "author": "Doe^Jane", "organization": "H"}
        session.add_all(
            [
                ReportRevision(version=2, findings=draft_content("Normal chest CT.", []), text="v2", **signed),
                ReportRevision(version=3, findings=draft_content("Edited impression.", []), text="v3", **signed),
                Delivery(report_id=report.id, subject=f"draft:{report.id}", destination="pacs", document="sr"),
            ]
        )


def test_metrics_follow_the_database_and_the_queue(
    start_api: Callable[..., ApiProcess], production_env: dict[str, str], tmp_path: Path
) -> None:
    api = start_api(**production_env)
    before = api.samples()
    assert before[("pacsvlm_database_up", ())] == 1 and before[("pacsvlm_broker_up", ())] == 1
    assert before[("pacsvlm_instances_received_total", ())] == 0
    assert before[("pacsvlm_studies", (("state", "drafted"),))] == 0
    assert before[("pacsvlm_queue_depth", (("queue", "analysis"),))] == 0
    assert math.isnan(before[("pacsvlm_draft_acceptance_ratio", ())])

    database_url = production_env["PACSVLM_DATABASE_URL"]
    add_reviewed_study(database_url)
    settings = Settings(database_url=database_url, broker_url=production_env["PACSVLM_BROKER_URL"], data_dir=tmp_path)
    send_analyze_study(settings, 1, settings.analysis_queue, 0)

    after = api.samples()
    assert after[("pacsvlm_instances_received_total", ())] == 1
    assert after[("pacsvlm_studies", (("state", "drafted"),))] == 1
    assert after[("pacsvlm_studies", (("state", "receiving"),))] == 0
    assert after[("pacsvlm_analysis_jobs", (("state", "done"),))] == 1
    assert after[("pacsvlm_analysis_job_duration_seconds_count", ())] == 1
    assert after[("pacsvlm_analysis_job_duration_seconds_sum", ())] == pytest.approx(42, abs=0.01)
    assert after[("pacsvlm_analysis_job_duration_seconds_bucket", (("le", "30.0"),))] == 0
    assert after[("pacsvlm_analysis_job_duration_seconds_bucket", (("le", "60.0"),))] == 1
    assert after[("pacsvlm_drafts_produced_total", ())] == 1
    assert after[("pacsvlm_reports", (("status", "signed"),))] == 1
    assert after[("pacsvlm_reports_signed_total", ())] == 2
    assert after[("pacsvlm_reports_signed_unedited_total", ())] == 1
    assert after[("pacsvlm_draft_acceptance_ratio", ())] == 0.5
    assert after[("pacsvlm_deliveries", (("state", "pending"),))] == 1
    assert after[("pacsvlm_queue_depth", (("queue", "analysis"),))] == 1
    assert after[("pacsvlm_queue_depth", (("queue", "delivery"),))] == 0
    assert after[("pacsvlm_queue_depth", (("queue", "analysis.stat"),))] == 0  # every queue a worker consumes


#: (model, site code or None, outcome, draft findings, accepted, edited, rejected, added, text similarity)
OUTCOMES = [
    ("tiny", "NORTH", "signed", 4, 3, 1, 0, 1, 0.9),
    ("tiny", "NORTH", "rejected", 2, 0, 0, 2, 0, 0.0),
    ("tiny", "SOUTH", "signed", 2, 2, 0, 0, 0, 1.0),
    ("tiny", "SOUTH", "signed", 2, 0, 2, 0, 0, 0.6),
    ("big", None, "signed", 0, 0, 0, 0, 2, 0.5),
]


def add_review_outcomes(database_url: str) -> None:
    """One study, draft, revision and review outcome per row of :data:`OUTCOMES` (as the review code leaves them)."""
    now = utcnow()
    with session_scope(database_url) as session:
        sites = {code: Site(code=code, name=code.title()) for code in ("NORTH", "SOUTH")}
        session.add_all(sites.values())
        session.flush()
        for number, (model, site, outcome, drafted, accepted, edited, rejected, added, similarity) in enumerate(
            OUTCOMES
        ):
            site_id = sites[site].id if site else None
            study = Study(
                study_uid=f"1.2.9.{number}",
                state=StudyState.SIGNED,
                calling_ae="CT1",
                first_received_at=now,
                last_received_at=now,
                stable_after=now,
                site_id=site_id,
            )
            session.add(study)
            session.flush()
            report = Report(
                study_id=study.id,
                study_version=1,
                status=ReportStatus.SIGNED if outcome == "signed" else ReportStatus.REJECTED,
                model_id=model,
                model_revision="r1",
                model_family="llava",
                prompt_version="ct-chest/v1",
                structured=True,
                findings=draft_content("Normal chest CT.", []),
                text="draft",
                raw_output="{}",
                evidence=[],
                timings={},
                tokens_in=10,
                tokens_out=5,
            )
            session.add(report)
            session.flush()
            revision = ReportRevision(
                report_id=report.id,
                version=2,
                status=RevisionStatus(outcome),
                findings=draft_content("Edited.", []),
                text="v2",
                author="Doe^Jane",
                organization="H",
            )
            session.add(revision)
            session.flush()
            session.add(
                ReviewOutcome(
                    report_id=report.id,
                    revision_id=revision.id,
                    site_id=site_id,
                    model_id=model,
                    model_revision="r1",
                    prompt_version="ct-chest/v1",
                    outcome=outcome,
                    draft_findings=drafted,
                    accepted=accepted,
                    edited=edited,
                    rejected=rejected,
                    added=added,
                    edit_distance=0 if similarity == 1.0 else 10,
                    text_similarity=similarity,
                    detail={},
                )
            )


def test_metrics_measure_review_outcomes_per_model_and_site(
    start_api: Callable[..., ApiProcess], production_env: dict[str, str]
) -> None:
    api = start_api(**production_env)
    before = api.samples()
    assert before[("pacsvlm_reports_rejected_total", ())] == 0
    assert not any(name.startswith(("pacsvlm_review_", "pacsvlm_finding_", "pacsvlm_signed_")) for name, _ in before)

    add_review_outcomes(production_env["PACSVLM_DATABASE_URL"])
    after = api.samples()

    def sample(name: str, model: str, site: str, **more: str) -> float:
        return after[(name, tuple(sorted({"model_id": model, "site": site, **more}.items())))]

    assert after[("pacsvlm_reports_signed_total", ())] == 4
    assert after[("pacsvlm_reports_rejected_total", ())] == 1
    assert sample("pacsvlm_review_outcomes", "tiny", "NORTH", outcome="signed") == 1
    assert sample("pacsvlm_review_outcomes", "tiny", "NORTH", outcome="rejected") == 1
    assert sample("pacsvlm_review_outcomes", "tiny", "SOUTH", outcome="signed") == 2
    assert sample("pacsvlm_review_outcomes", "big", "none", outcome="signed") == 1
    assert ("pacsvlm_review_outcomes", (("model_id", "big"), ("outcome", "rejected"), ("site", "none"))) not in after
    north = {fate: sample("pacsvlm_review_findings", "tiny", "NORTH", fate=fate) for fate in
             ("drafted", "accepted", "edited", "rejected", "added")}  # fmt: skip
    assert north == {"drafted": 6, "accepted": 3, "edited": 1, "rejected": 2, "added": 1}
    assert sample("pacsvlm_finding_acceptance_ratio", "tiny", "NORTH") == pytest.approx(3 / 6)
    assert sample("pacsvlm_finding_acceptance_ratio", "tiny", "SOUTH") == pytest.approx(2 / 4)
    assert math.isnan(sample("pacsvlm_finding_acceptance_ratio", "big", "none"))  # no draft finding reviewed
    assert sample("pacsvlm_signed_text_similarity_mean", "tiny", "NORTH") == pytest.approx(0.9)  # rejections left out
    assert sample("pacsvlm_signed_text_similarity_mean", "tiny", "SOUTH") == pytest.approx(0.8)
    assert sample("pacsvlm_signed_text_similarity_mean", "big", "none") == pytest.approx(0.5)


def test_embedded_defaults_are_healthy_and_measured(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()
    response = api.get("/health")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert checks["database"]["detail"] == "sqlite answered SELECT 1"
    assert checks["broker"]["detail"] == "file-system broker folder is writable"
    assert (api.data_dir / "pacs-vlm.sqlite").is_file() and (api.data_dir / "instances").is_dir()

    add_reviewed_study(f"sqlite:///{api.data_dir / 'pacs-vlm.sqlite'}")
    samples = api.samples()
    assert samples[("pacsvlm_instances_received_total", ())] == 1
    assert samples[("pacsvlm_analysis_job_duration_seconds_sum", ())] == pytest.approx(42, abs=0.01)
    assert samples[("pacsvlm_draft_acceptance_ratio", ())] == 0.5
    assert samples[("pacsvlm_queue_depth", (("queue", "analysis"),))] == 0

    add_review_outcomes(f"sqlite:///{api.data_dir / 'pacs-vlm.sqlite'}")  # the same aggregates on SQLite
    samples = api.samples()
    labels = (("model_id", "tiny"), ("site", "SOUTH"))
    assert samples[("pacsvlm_finding_acceptance_ratio", labels)] == pytest.approx(0.5)
    assert samples[("pacsvlm_signed_text_similarity_mean", labels)] == pytest.approx(0.8)
    assert samples[("pacsvlm_reports_rejected_total", ())] == 1


def test_a_hung_check_fails_at_its_deadline(tmp_path: Path) -> None:
    def hangs(_settings: Settings) -> CheckOutcome:
        time.sleep(30)
        raise AssertionError("unreachable")

    def passes(_settings: Settings) -> CheckOutcome:
        return CheckOutcome(True, "fine")

    started = time.monotonic()
    results = run_checks(Settings(data_dir=tmp_path), {"stuck": hangs, "quick": passes}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert [(r.name, r.outcome.ok) for r in results] == [("stuck", False), ("quick", True)]
    assert results[0].outcome.detail == "no answer within 0.5 s"


def test_api_refuses_an_unmigrated_or_unreachable_database_and_a_taken_port(postgres_url: str, tmp_path: Path) -> None:
    process = run_api(tmp_path / "unmigrated", {"PACSVLM_DATABASE_URL": postgres_url})
    output = b" ".join(process.communicate(timeout=30)[0].split())  # rich wraps long lines
    assert process.returncode == 2
    assert b"run 'pacs-vlm db upgrade'" in output and b"Traceback" not in output

    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    process = run_api(tmp_path / "unreachable", {"PACSVLM_DATABASE_URL": closed})
    output = b" ".join(process.communicate(timeout=30)[0].split())
    assert process.returncode == 2
    assert b"cannot use the database: OperationalError" in output and b"Traceback" not in output

    api = ApiProcess(tmp_path / "first", {"PACSVLM_MIN_FREE_BYTES": "0"}).start()
    try:
        second = run_api(tmp_path / "second", {}, "--port", str(api.port))
        output = b" ".join(second.communicate(timeout=30)[0].split())
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{api.port}".encode() in output and b"Traceback" not in output
    finally:
        api.stop()
