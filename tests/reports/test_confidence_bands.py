"""Acceptance of draft findings by confidence band: real rows in SQLite and PostgreSQL, the command, /metrics.

Reviewed drafts are written as the review code leaves them: the draft row, its signed revision and the outcome
that :func:`integration.reports.review.add_signed_outcome` computes (a rejection's outcome from
:func:`integration.reports.review_diff.review_difference` against an empty document, as ``reject_draft`` does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from integration.config import Settings, install_settings
from integration.findings import Document
from integration.reports.confidence_bands import BandStats, acceptance_by_band, band_of
from integration.reports.review import add_signed_outcome
from integration.reports.review_diff import review_difference
from integration.store.migrate import upgrade
from integration.store.session import engine_for, session_scope
from integration.store.tables import (
    Report,
    ReportRevision,
    ReportStatus,
    ReviewOutcome,
    RevisionStatus,
    Study,
    StudyState,
    utcnow,
)
from integration.web.app import create_app
from worker.cli import app

EFFUSION = "Small left pleural effusion."
NODULE = "Spiculated nodule in the right upper lobe."
ATELECTASIS = "Bibasal atelectasis."
CARDIO = "Heart size within normal limits."


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of each kind: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'store.sqlite'}"
        upgrade(database)
        yield database
    else:
        yield request.getfixturevalue("migrated_postgres_url")


def finding(text: str, confidence: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"text": text, "images": []}
    if confidence is not None:
        entry["confidence"] = confidence
    return entry


def draft(*findings: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"findings": list(findings), "impression": "", "limitations": "", "structured": True, "problems": [], **more}


def add_draft(url: str, number: int, content: dict[str, Any], revision: str = "r1", prompt: str = "ct-chest/v1") -> int:
    now = utcnow()
    with session_scope(url) as session:
        study = Study(
            study_uid=f"1.2.826.0.1.99.{number}",
            state=StudyState.DRAFTED,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
        )
        session.add(study)
        session.flush()
        report = Report(
            study_id=study.id,
            study_version=1,
            model_id="tiny/llava",
            model_revision=revision,
            model_family="llava",
            prompt_version=prompt,
            structured=True,
            findings=content,
            text="draft",
            raw_output="{}",
            evidence=[],
            timings={},
            tokens_in=1,
            tokens_out=1,
        )
        session.add(report)
        session.flush()
        return report.id


def sign(url: str, report_id: int, version: int, *findings: dict[str, Any]) -> None:
    """A signed version and its outcome, as signing records them (the pairing inferred from the texts)."""
    with session_scope(url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.status = ReportStatus.SIGNED
        revision = ReportRevision(
            report_id=report_id,
            version=version,
            status=RevisionStatus.SIGNED,
            findings=draft(*findings),
            text="signed",
            author="Doe^Jane",
            organization="H",
        )
        session.add(revision)
        session.flush()
        add_signed_outcome(session, report, revision.id, actor="Doe^Jane", source="test")


def reject(url: str, report_id: int) -> None:
    with session_scope(url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.status = ReportStatus.REJECTED
        revision = ReportRevision(
            report_id=report_id, version=2, status=RevisionStatus.REJECTED, findings=draft(), text="", author="x",
            organization="H",
        )  # fmt: skip
        session.add(revision)
        session.flush()
        difference = review_difference(report.findings, Document())
        session.add(outcome_row(report, revision.id, "rejected", difference.detail, difference.draft_findings))


def outcome_row(report: Report, revision_id: int, outcome: str, detail: Any, drafted: int = 0) -> ReviewOutcome:
    return ReviewOutcome(
        report_id=report.id, revision_id=revision_id, model_id=report.model_id, model_revision=report.model_revision,
        prompt_version=report.prompt_version, outcome=outcome, draft_findings=drafted, accepted=0, edited=0,
        rejected=drafted, added=0, edit_distance=0, text_similarity=0.0, detail=detail,
    )  # fmt: skip


def reviewed_drafts(url: str) -> None:
    """Six reviewed drafts of two model revisions (scores chosen on and around the 0.5 / 0.8 band edges)."""
    first = add_draft(
        url, 1, draft(finding(NODULE, 0.95), finding(EFFUSION, 0.6), finding(ATELECTASIS, 0.2), finding(CARDIO))
    )
    sign(url, first, 2, finding(NODULE), finding("Small left pleural effusion, loculated."), finding(CARDIO),
         finding("Added by the radiologist: old rib fracture."))  # fmt: skip
    rejected = add_draft(url, 2, draft(finding(NODULE, 0.85), finding(EFFUSION, 0.3)))
    reject(url, rejected)
    amended = add_draft(url, 3, draft(finding(ATELECTASIS, 0.4)))
    sign(url, amended, 2, finding(ATELECTASIS))
    sign(url, amended, 3, finding("Something else entirely, a different report."))  # an amendment: not counted
    other = add_draft(url, 4, draft(finding(NODULE, 0.5), finding(EFFUSION, 0.8)), revision="r2")
    sign(url, other, 2, finding(NODULE), finding(EFFUSION))
    unscored = add_draft(url, 5, draft(finding(NODULE)), prompt="ct-chest/v0")
    sign(url, unscored, 2, finding(NODULE))
    broken = add_draft(url, 6, draft(finding(NODULE, 0.9)), revision="r3")
    with session_scope(url) as session:  # outcomes whose detail cannot be read are left out, never a failed query
        report = session.get(Report, broken)
        assert report is not None
        for version, detail in enumerate(
            ({"findings": ["x", *({"index": i, "outcome": "accepted"} for i in ("0", -1, 9, 10**12, 0.5))]},), 2
        ):
            revision = ReportRevision(
                report_id=broken, version=version, status=RevisionStatus.SIGNED, findings=draft(), text="",
                author="x", organization="H",
            )  # fmt: skip
            session.add(revision)
            session.flush()
            session.add(outcome_row(report, revision.id, "signed", detail))


EXPECTED = [
    BandStats("tiny/llava", "r1", "ct-chest/v1", "low", accepted=1, edited=0, rejected=2),
    BandStats("tiny/llava", "r1", "ct-chest/v1", "medium", accepted=0, edited=1, rejected=0),
    BandStats("tiny/llava", "r1", "ct-chest/v1", "high", accepted=1, edited=0, rejected=1),
    BandStats("tiny/llava", "r2", "ct-chest/v1", "low"),
    BandStats("tiny/llava", "r2", "ct-chest/v1", "medium", accepted=1),
    BandStats("tiny/llava", "r2", "ct-chest/v1", "high", accepted=1),
]


def test_bands_follow_the_thresholds() -> None:
    assert [band_of(score, 0.5, 0.8) for score in (0.0, 0.4999, 0.5, 0.7999, 0.8, 1.0)] == [
        "low", "low", "medium", "medium", "high", "high",
    ]  # fmt: skip
    assert band_of(0.6, 0.6, 0.6) == "high" and band_of(0.59, 0.6, 0.6) == "low"


def test_acceptance_by_band_from_review_outcomes(url: str) -> None:
    with engine_for(url).connect() as connection:
        assert acceptance_by_band(connection, 0.5, 0.8) == []
    reviewed_drafts(url)
    with engine_for(url).connect() as connection:
        stats = acceptance_by_band(connection, 0.5, 0.8)
        assert stats == EXPECTED
        assert [s.acceptance_rate for s in stats[:3]] == [pytest.approx(1 / 3), 0.0, 0.5]
        assert stats[3].reviewed == 0 and stats[3].acceptance_rate is None
        later = acceptance_by_band(connection, 0.5, 0.8, since=utcnow() + timedelta(hours=1))
        earlier = acceptance_by_band(connection, 0.5, 0.8, since=utcnow() - timedelta(hours=1))
        assert later == [] and earlier == EXPECTED
        moved = {(s.model_revision, s.band): s.reviewed for s in acceptance_by_band(connection, 0.9, 0.96)}
        assert moved[("r1", "low")] == 5 and moved[("r1", "medium")] == 1 and moved[("r2", "low")] == 2


def test_metrics_show_acceptance_by_band_and_the_drafts_checks(url: str, tmp_path: Path) -> None:
    reviewed_drafts(url)
    checks = [
        {"finding": 1, "kind": "laterality", "message": "text says left; Image Laterality is R"},
        {"finding": 0, "kind": "identifier", "message": "an identifier was masked"},
        {"finding": 2, "kind": "laterality", "message": "text says right; Laterality is L"},
        {"finding": 1, "kind": "no-such-kind", "message": "left out"},
        "not a check",
    ]
    critical = [{"finding": 1, "code": "pneumothorax", "label": "Pneumothorax", "source": "text", "phrase": "x"}]
    add_draft(url, 7, draft(finding(NODULE), checks=checks, critical=critical, decoding="grammar"))
    add_draft(url, 8, draft(finding(NODULE), checks=checks[:1], decoding="free-fallback"))
    add_draft(url, 9, draft(finding(NODULE), checks={"not": "a list"}, critical=[critical[0], critical[0]]))
    settings = Settings(data_dir=tmp_path / "data", database_url=url, min_free_bytes=0, operations_public=True)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }

    def band(name: str, revision: str, band: str, **more: str) -> float:
        labels = {"model_id": "tiny/llava", "model_revision": revision, "prompt_version": "ct-chest/v1", "band": band}
        return samples[(name, tuple(sorted({**labels, **more}.items())))]

    assert samples[("pacsvlm_database_up", ())] == 1
    for expected in EXPECTED:
        for fate in ("reviewed", "accepted", "edited", "rejected"):
            value = band("pacsvlm_confidence_findings", expected.model_revision, expected.band, fate=fate)
            assert value == getattr(expected, fate), (expected, fate)
    assert band("pacsvlm_confidence_acceptance_ratio", "r1", "low") == pytest.approx(1 / 3)
    assert band("pacsvlm_confidence_acceptance_ratio", "r1", "high") == 0.5
    assert math.isnan(band("pacsvlm_confidence_acceptance_ratio", "r2", "low"))
    assert not any(name.startswith("pacsvlm_confidence") and ("prompt_version", "ct-chest/v0") in labels
                   for name, labels in samples)  # fmt: skip
    kinds = {labels[0][1]: value for (name, labels), value in samples.items() if name == "pacsvlm_draft_checks_total"}
    assert kinds == {"laterality": 3, "identifier": 1, "sex": 0, "region": 0, "modality": 0, "contrast": 0, "image": 0}
    assert samples[("pacsvlm_drafts_with_checks_total", ())] == 2
    assert samples[("pacsvlm_draft_critical_matches_total", (("category", "pneumothorax"),))] == 3
    assert samples[("pacsvlm_drafts_with_critical_matches_total", ())] == 2
    decoding = {labels[0][1]: v for (name, labels), v in samples.items() if name == "pacsvlm_drafts_by_decoding_total"}
    assert decoding == {"grammar": 1, "free-fallback": 1, "free": 0, "response_format": 0, "unrecorded": 7}


def run(url: str, *args: str) -> Any:
    install_settings(None)  # the environment is read afresh
    return CliRunner().invoke(
        app,
        ["report", "confidence", *args],
        env={"PACSVLM_DATABASE_URL": url, "COLUMNS": "200"},
        catch_exceptions=False,
    )


def test_report_confidence_prints_the_bands(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACSVLM_DATA_DIR", str(tmp_path / "data"))
    empty = run(url)
    assert empty.exit_code == 0 and "No reviewed draft finding has a confidence score yet." in empty.stdout
    reviewed_drafts(url)
    table = run(url)
    assert table.exit_code == 0, table.output
    lines = [" ".join(line.replace("│", " ").split()) for line in table.stdout.splitlines()]
    assert "tiny/llava r1 ct-chest/v1 low < 0.5 3 1 0 2 33%" in lines
    assert "tiny/llava r1 ct-chest/v1 medium 0.5 to < 0.8 1 0 1 0 0%" in lines
    assert "tiny/llava r2 ct-chest/v1 low < 0.5 0 0 0 0 -" in lines
    assert "not a probability that a finding is right" in table.stdout
    monkeypatch.setenv("PACSVLM_CONFIDENCE_LOW", "0.9")
    monkeypatch.setenv("PACSVLM_CONFIDENCE_HIGH", "0.96")
    as_json = run(url, "--json", "--since-days", "1")
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert (document["confidence_low"], document["confidence_high"]) == (0.9, 0.96)
    assert document["rows"][0] == {
        "model_id": "tiny/llava", "model_revision": "r1", "prompt_version": "ct-chest/v1", "band": "low",
        "reviewed": 5, "accepted": 1, "edited": 1, "rejected": 3, "acceptance_rate": 0.2,
    }  # fmt: skip
    help_text = CliRunner().invoke(app, ["report", "confidence", "--help"], env={"COLUMNS": "200"})
    assert help_text.exit_code == 0 and "--since-days" in help_text.stdout and "confidence band" in help_text.stdout
