"""A reviewer's changes to a draft (versioned, replayed), and closing it: sign the working copy or reject it.

SQLite and PostgreSQL; signing writes real SR files from a generated CT series in the instance store.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from integration.config import Settings
from integration.reports.readiness import ReviewIncomplete
from integration.reports.review import reject_draft, sign_reviewed, signer_of
from integration.reports.sr import Verification, read_sr
from integration.samples import write_ct_series
from integration.store.migrate import upgrade
from integration.store.reviews import (
    MAX_FINDING_CHARS,
    MAX_SECTION_CHARS,
    ReportClosed,
    ReviewConflict,
    ReviewError,
    change_history,
    record_change,
    review_lock,
    working_copy,
)
from integration.store.revisions import UnknownReport
from integration.store.session import session_scope
from integration.store.sso_tables import UserSite
from integration.store.tables import (
    AuditEvent,
    Report,
    ReportRevision,
    ReviewOutcome,
    Site,
    Study,
    StudyState,
    User,
    UserRole,
    utcnow,
)
from tests.reports.test_signing import DRAFT_FINDINGS, add_report, evidence_of, store_study
from tests.support.records import db_rows
from tests.support.sr_tools import check_with_tools
from worker.cli import app

NODULE, EFFUSION = (f["text"] for f in DRAFT_FINDINGS["findings"])


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'pacs-vlm.sqlite'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("migrated_postgres_url")
    return Settings(data_dir=data_dir, database_url=url)


@pytest.fixture
def draft(settings: Settings, tmp_path: Path) -> int:
    """A draft of a stored three-slice CT study (two findings, images 1 and 2 cited)."""
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 3, rows=16, columns=16))
    return add_report(settings, study_id, evidence_of(headers))


def change(settings: Settings, report_id: int, action: str, **kwargs: Any) -> Any:
    with session_scope(settings.database_url) as session:
        return record_change(session, report_id, actor="rad", action=action, **kwargs)


def copy_of(settings: Settings, report_id: int) -> Any:
    with session_scope(settings.database_url) as session:
        return working_copy(session, report_id)


def history(settings: Settings, report_id: int) -> list[dict[str, Any]]:
    with session_scope(settings.database_url) as session:
        return change_history(session, report_id)


def test_every_action_is_a_numbered_change_and_the_working_copy_replays_them(settings: Settings, draft: int) -> None:
    start = copy_of(settings, draft)
    assert (start.status, start.seq, start.impression, start.limitations) == (
        "draft",
        0,
        DRAFT_FINDINGS["impression"],
        DRAFT_FINDINGS["limitations"],
    )
    assert [(f.index, f.text, f.draft_text, f.images, f.decision) for f in start.findings] == [
        (0, NODULE, NODULE, (1, 2), "pending"),
        (1, EFFUSION, EFFUSION, (2,), "pending"),
    ]
    steps = [
        ("accept", {"finding": 0}, lambda c: c.findings[0].decision == "accepted"),
        ("edit", {"finding": 1, "text": "Small left effusion."}, lambda c: c.findings[1].decision == "edited"),
        ("add", {"text": "Old rib fracture."}, lambda c: c.findings[2].decision == "added"),
        ("impression", {"text": "Nodule."}, lambda c: c.impression == "Nodule."),
        ("limitations", {"text": ""}, lambda c: c.limitations == ""),
        ("comparison", {"text": "Nodule unchanged."}, lambda c: c.comparison == "Nodule unchanged."),
        ("reject", {"finding": 0}, lambda c: c.findings[0].decision == "rejected"),
        ("accept", {"finding": 0}, lambda c: c.findings[0].decision == "accepted"),
        ("reject", {"finding": 1}, lambda c: c.findings[1].decision == "rejected"),
        ("accept", {"finding": 1}, lambda c: c.findings[1].decision == "edited"),  # keeps the edited text
        ("reset", {"finding": 1}, lambda c: (c.findings[1].text, c.findings[1].decision) == (EFFUSION, "pending")),
        ("edit", {"finding": 2, "text": "Healed rib fracture."}, lambda c: c.findings[2].decision == "added"),
        ("reset", {"finding": 2}, lambda c: c.findings[2].decision == "rejected"),  # an added finding: removed
        ("edit", {"finding": 0, "text": NODULE}, lambda c: c.findings[0].decision == "accepted"),  # same as draft
    ]
    for seq, (action, kwargs, check) in enumerate(steps, start=1):
        copy = change(settings, draft, action, expected_seq=seq - 1, **kwargs)
        assert copy.seq == seq and check(copy), (action, copy)
        assert copy_of(settings, draft) == copy  # replayed from the rows: the same copy
    final = copy_of(settings, draft)
    assert [(f.index, f.text, f.draft_text, f.images, f.decision) for f in final.findings] == [
        (0, NODULE, NODULE, (1, 2), "accepted"),
        (1, EFFUSION, EFFUSION, (2,), "pending"),
        (2, "Healed rib fracture.", None, (), "rejected"),
    ]
    assert final.signed_findings == [{"text": NODULE, "images": [1, 2]}, {"text": EFFUSION, "images": [2]}]
    assert (final.draft_impression, final.draft_limitations) == (DRAFT_FINDINGS["impression"], "No prior studies.")
    assert (final.comparison, final.draft_comparison, final.prior_note) == ("Nodule unchanged.", "", "")
    rows = history(settings, draft)
    assert [r["seq"] for r in rows] == list(range(1, len(steps) + 1))
    assert [r["action"] for r in rows] == [action for action, _, _ in steps]
    assert all(r["actor"] == "rad" and r["at"].endswith("+00:00") for r in rows)
    picked = [(r["finding"], r["before"], r["after"]) for r in rows]
    assert picked[0] == (0, "pending", "accepted")
    assert picked[1] == (1, EFFUSION, "Small left effusion.")
    assert picked[2] == (None, None, "Old rib fracture.")
    assert picked[3] == (None, DRAFT_FINDINGS["impression"], "Nodule.")
    assert picked[4] == (None, "No prior studies.", "")
    assert picked[5] == (None, "", "Nodule unchanged.")
    assert picked[6] == (0, "accepted", "rejected")
    assert picked[10] == (1, "Small left effusion.", EFFUSION)
    assert picked[12] == (2, "Healed rib fracture.", None)
    with session_scope(settings.database_url) as session:
        assert session.get(Report, draft).findings == DRAFT_FINDINGS  # the draft itself never changes


def test_invalid_changes_are_refused_and_nothing_is_recorded(settings: Settings, draft: int) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("approve", {"finding": 0}, "unknown action"),
        ("edit", {"finding": 0}, "finding text is required"),
        ("edit", {"finding": 0, "text": " \x00\x1b\t "}, "must not be empty"),
        ("add", {"text": ""}, "must not be empty"),
        ("add", {"text": "x", "finding": 0}, "no finding index"),
        ("accept", {"finding": 2}, "finding 2 does not exist"),
        ("accept", {}, "finding None does not exist"),
        ("reject", {"finding": -1}, "does not exist"),
        ("accept", {"finding": 0, "text": "x"}, "takes no text"),
        ("impression", {"finding": 0, "text": "x"}, "no finding index"),
        ("impression", {}, "impression is required"),
        ("edit", {"finding": 0, "text": "x" * (MAX_FINDING_CHARS + 1)}, f"at most {MAX_FINDING_CHARS}"),
        ("add", {"text": "y" * 1_000_000}, "1000000 characters long"),
        ("limitations", {"text": "z" * (MAX_SECTION_CHARS + 1)}, f"at most {MAX_SECTION_CHARS}"),
        ("comparison", {"finding": 0, "text": "x"}, "no finding index"),
        ("comparison", {}, "comparison is required"),
        ("comparison", {"text": "c" * (MAX_SECTION_CHARS + 1)}, f"at most {MAX_SECTION_CHARS}"),
    ]
    for action, kwargs, message in cases:
        with pytest.raises(ReviewError, match=message):
            change(settings, draft, action, **kwargs)
    with pytest.raises(UnknownReport):
        change(settings, 999_999, "accept", finding=0)
    assert history(settings, draft) == [] and copy_of(settings, draft).seq == 0
    longest = change(settings, draft, "add", text="w" * MAX_FINDING_CHARS)  # exactly at the limit: kept whole
    assert longest.findings[2].text == "w" * MAX_FINDING_CHARS


def test_hostile_text_is_kept_as_inert_text_without_control_characters(settings: Settings, draft: int) -> None:
    hostile = '<script>alert("x")</script>\x00\x07 <img src=x onerror=alert(1)>\x1b[31m\u202e\r\nline two\ud800'
    copy = change(settings, draft, "edit", finding=0, text=hostile)
    expected = '<script>alert("x")</script> <img src=x onerror=alert(1)>[31m\u202e\r\nline two'
    assert copy.findings[0].text == expected
    assert copy_of(settings, draft).findings[0].text == expected
    assert history(settings, draft)[0]["after"] == expected


def test_a_stale_expected_seq_is_a_conflict(settings: Settings, draft: int) -> None:
    change(settings, draft, "edit", finding=0, text="First reviewer.", expected_seq=0)
    with pytest.raises(ReviewConflict, match="changed meanwhile"):
        change(settings, draft, "edit", finding=0, text="Second reviewer.", expected_seq=0)
    assert [r["after"] for r in history(settings, draft)] == ["First reviewer."]
    assert change(settings, draft, "edit", finding=0, text="Second reviewer.", expected_seq=1).seq == 2


def test_concurrent_changes_on_postgresql_get_distinct_numbers_and_none_is_lost(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=migrated_postgres_url)
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 1, rows=8, columns=8))
    report_id = add_report(settings, study_id, evidence_of(headers))
    errors: list[BaseException] = []

    def review(worker: int) -> None:
        try:
            for n in range(5):
                change(settings, report_id, "add", text=f"finding {worker}.{n}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=review, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = history(settings, report_id)
    assert [r["seq"] for r in rows] == list(range(1, 21))
    assert sorted(r["after"] for r in rows) == sorted(f"finding {w}.{n}" for w in range(4) for n in range(5))
    assert len(copy_of(settings, report_id).findings) == 22


def test_a_change_waits_for_a_signature_in_progress_then_finds_the_report_closed(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 1, rows=8, columns=8))
    report_id = add_report(settings, study_id, evidence_of(headers))
    outcome: list[BaseException | None] = []

    def late_change() -> None:
        try:
            change(settings, report_id, "accept", finding=0)
            outcome.append(None)
        except BaseException as exc:  # reported by the main thread
            outcome.append(exc)

    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    with review_lock(url, report_id):  # what signing holds while it writes the SR and the version
        thread = threading.Thread(target=late_change)
        thread.start()
        deadline = time.monotonic() + 30
        while db_rows(url, str(waiting)) != [(1,)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db_rows(url, str(waiting)) == [(1,)] and not outcome  # the change waits for the lock
        with session_scope(url) as session:
            session.execute(update(Report).where(Report.id == report_id).values(status="signed"))
    thread.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], ReportClosed)
    assert history(settings, report_id) == []


def test_a_rejected_draft_is_closed_with_its_reason_and_outcome(settings: Settings, draft: int) -> None:
    change(settings, draft, "accept", finding=0)
    with pytest.raises(ReviewError, match="must not be empty"):
        reject_draft(settings, draft, actor="rad", reason=" \x00 ")
    with pytest.raises(ReviewConflict):
        reject_draft(settings, draft, actor="rad", reason="Wrong study.", expected_seq=0)
    reason = "Wrong study: images of another patient (John Doe)."
    revision_id = reject_draft(settings, draft, actor="rad", reason=reason, source="127.0.0.1:1")
    with pytest.raises(ReportClosed, match="rejected"):
        change(settings, draft, "accept", finding=1)
    with pytest.raises(ReportClosed):
        reject_draft(settings, draft, actor="rad", reason="again")
    with pytest.raises(ReportClosed):
        sign_reviewed(settings, draft, actor="rad", person_name="Doe^Jane", organization="X")
    with session_scope(settings.database_url) as session:
        report = session.get(Report, draft)
        revision = session.get(ReportRevision, revision_id)
        [outcome] = session.scalars(select(ReviewOutcome)).all()
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "report.reject")).all()
    assert report is not None and report.status.value == "rejected"
    assert revision is not None
    assert (revision.version, revision.status.value, revision.text, revision.author) == (2, "rejected", reason, "rad")
    assert revision.sr_path is None and revision.findings["findings"] == []
    assert (outcome.outcome, outcome.revision_id, outcome.draft_findings) == ("rejected", revision_id, 2)
    assert (outcome.accepted, outcome.edited, outcome.rejected, outcome.added) == (0, 0, 2, 0)
    assert outcome.text_similarity == 0.0 and outcome.model_id == "smoke/llava"
    assert event.object_id == str(draft) and event.source == "127.0.0.1:1" and event.actor == "rad"
    assert event.detail == {"revision_id": revision_id, "version": 2, "seq": 1, "reason_length": len(reason)}


def test_signing_the_working_copy_stores_the_version_its_sr_and_the_outcome(settings: Settings, draft: int) -> None:
    second = DRAFT_FINDINGS["findings"][1]
    prior = {"study_uid": "1.2.3.4", "study_date": "2024-01-01", "modality": "CT", "description": "CT CHEST"}
    cites_unseen = {
        **DRAFT_FINDINGS,
        "findings": [{"text": NODULE, "images": [1, 2, 9]}, second],
        "comparison": "Nodule new since the prior.",
        "priors": [prior],
    }
    with session_scope(settings.database_url) as session:  # the model cited an image it never saw: dropped
        session.execute(update(Report).where(Report.id == draft).values(findings=cites_unseen))
    assert copy_of(settings, draft).findings[0].images == (1, 2)
    change(settings, draft, "edit", finding=1, text="Small <b>left</b> effusion.")
    change(settings, draft, "add", text="Old rib fracture.")
    change(settings, draft, "add", text="Removed again.")
    change(settings, draft, "reset", finding=3)
    change(settings, draft, "impression", text="Nodule; CT follow-up in 3 months.")
    assert copy_of(settings, draft).draft_comparison == "Nodule new since the prior."
    change(settings, draft, "comparison", text="Nodule larger than on the prior.")
    with pytest.raises(ReviewConflict):
        sign_reviewed(settings, draft, actor="rad", person_name="Doe^Jane", organization="X", expected_seq=5)
    # finding 1 was never reviewed: refused unless the radiologist confirms exactly that count
    for confirmed in (None, 0, 2):
        with pytest.raises(ReviewIncomplete, match="1 finding was not reviewed"):
            sign_reviewed(
                settings, draft, actor="rad", person_name="Doe^Jane", organization="X", confirm_unreviewed=confirmed
            )
    revision_id = sign_reviewed(
        settings,
        draft,
        actor="rad",
        person_name="Doe^Jane",
        organization="St Elsewhere",
        expected_seq=6,
        confirm_unreviewed=1,
    )
    with pytest.raises(ReportClosed, match="signed"):
        change(settings, draft, "accept", finding=0)
    with pytest.raises(ReportClosed):
        sign_reviewed(settings, draft, actor="rad", person_name="Doe^Jane", organization="X")
    with pytest.raises(ReportClosed):
        reject_draft(settings, draft, actor="rad", reason="too late")
    with session_scope(settings.database_url) as session:
        report = session.get(Report, draft)
        assert report is not None
        study = session.get(Study, report.study_id)
        revision = session.get(ReportRevision, revision_id)
        [outcome] = session.scalars(select(ReviewOutcome)).all()
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "report.sign")).all()
    signed = [NODULE, "Small <b>left</b> effusion.", "Old rib fracture."]
    assert report.status.value == "signed" and study is not None and study.state == StudyState.SIGNED
    assert revision is not None and revision.version == 2 and revision.author == "Doe^Jane"
    assert [f["text"] for f in revision.findings["findings"]] == signed
    assert [f["images"] for f in revision.findings["findings"]] == [[1, 2], [2], []]
    assert revision.findings["impression"] == "Nodule; CT follow-up in 3 months."
    assert revision.findings["limitations"] == "No prior studies."
    assert revision.findings["comparison"] == "Nodule larger than on the prior."  # edited; the priors stay
    assert [p["study_uid"] for p in revision.findings["priors"]] == ["1.2.3.4"]
    assert revision.text.startswith("COMPARISON: Nodule larger than on the prior.\n")
    path = settings.data_dir / str(revision.sr_path)
    check_with_tools(path)
    reading = read_sr(pydicom.dcmread(path))
    assert (reading.completion_flag, reading.verification_flag) == ("COMPLETE", "VERIFIED")
    assert [f.text for f in reading.findings] == signed
    assert reading.comparison.statements == ("Nodule larger than on the prior.",)
    assert [o.name for o in reading.verifying_observers] == ["Doe^Jane"]
    assert (outcome.outcome, outcome.revision_id, outcome.draft_findings) == ("signed", revision_id, 2)
    assert (outcome.accepted, outcome.edited, outcome.rejected, outcome.added) == (1, 1, 0, 1)
    assert outcome.detail["findings"][1] == {"index": 1, "outcome": "edited", "signed": 1, "distance": 17}
    assert outcome.detail["added"] == [{"signed": 2, "text": "Old rib fracture."}]
    assert outcome.detail["comparison_changed"] and outcome.detail["impression_changed"]
    assert 0 < outcome.text_similarity < 1 and outcome.edit_distance > 0
    assert event.actor == "rad" and event.object_id == str(draft)
    assert event.detail is not None and event.detail["seq"] == 6 and event.detail["added"] == 1
    assert "effusion" not in repr(event.detail)


def test_an_unparsed_model_output_is_signed_only_after_the_radiologist_writes(settings: Settings, draft: int) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Report).where(Report.id == draft).values(structured=False))
    change(settings, draft, "accept", finding=0)
    change(settings, draft, "accept", finding=1)
    with pytest.raises(ReviewIncomplete, match="could not be parsed"):
        sign_reviewed(settings, draft, actor="rad", person_name="Doe^Jane", organization="X")
    change(settings, draft, "impression", text="Written by the radiologist.")
    sign_reviewed(settings, draft, actor="rad", person_name="Doe^Jane", organization="X")
    assert copy_of(settings, draft).status == "signed"


def test_nothing_to_sign_is_refused(settings: Settings, draft: int) -> None:
    change(settings, draft, "reject", finding=0)
    change(settings, draft, "reject", finding=1)
    change(settings, draft, "impression", text="")
    with pytest.raises(ReviewError, match="nothing to sign"):
        sign_reviewed(settings, draft, actor="rad", person_name="Doe^Jane", organization="X")
    assert copy_of(settings, draft).status == "draft"


def test_the_signer_is_a_valid_dicom_person_of_the_users_site(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        site = Site(code="NORTH", name="North\\Hospital " + "x" * 100)
        session.add(site)
        session.flush()
        users = [
            User(username="plain", password_hash="-", role=UserRole.RADIOLOGIST, site_id=site.id),
            User(username="a\\b=c^d^e^f^g^h\x01", password_hash="-", role=UserRole.RADIOLOGIST, site_id=site.id),
            User(username="boss", password_hash="-", role=UserRole.ADMIN, person_name="Roe^Richard"),
        ]
        session.add_all(users)
        session.flush()
        signers = [signer_of(session, user.id) for user in users]
        with pytest.raises(LookupError):
            signer_of(session, 999_999)
    assert signers[0] == ("plain^", ("North Hospital " + "x" * 100)[:64])
    assert signers[1][0] == "a b c^d^e^f^g h"
    assert signers[2] == ("Roe^Richard", "pacs-vlm")
    for name, organization in signers:
        Verification(name, organization, utcnow())  # accepted by the SR's own checks


def test_report_sign_on_the_command_line_records_the_outcome_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'var' / 'db.sqlite'}")
    upgrade(settings.database_url)
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 2, rows=8, columns=8))
    report_id = add_report(settings, study_id, evidence_of(headers))
    edits = tmp_path / "edits.json"
    edits.write_text('[{"text": "Nodule in the right upper lobe.", "images": [1]}, {"text": "New.", "images": []}]')
    monkeypatch.setenv("PACSVLM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PACSVLM_DATABASE_URL", settings.database_url)
    args = ["report", "sign", str(report_id), "--author", "Doe^Jane", "--organization", "X"]
    result = CliRunner().invoke(app, [*args, "--findings-file", str(edits)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1 accepted, 0 edited, 1 rejected, 1 added" in " ".join(result.stderr.split())
    with session_scope(settings.database_url) as session:
        [outcome] = session.scalars(select(ReviewOutcome)).all()
        actors = session.scalars(select(AuditEvent.source).where(AuditEvent.action == "report.sign")).all()
    assert (outcome.accepted, outcome.edited, outcome.rejected, outcome.added) == (1, 0, 1, 1)
    assert actors == ["cli"]
    second = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # v3 of a signed report: its own outcome
    assert second.exit_code == 0, second.output
    rejected = CliRunner().invoke(app, ["report", "reject", str(report_id), "--reason", "x", "--author", "rad"])
    assert rejected.exit_code == 2 and "not a draft" in " ".join(rejected.stderr.split())
    with session_scope(settings.database_url) as session:
        assert len(session.scalars(select(ReviewOutcome)).all()) == 2


def test_a_signer_of_several_sites_signs_for_the_studys_site(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        north, south, east = Site(code="N", name="North"), Site(code="S", name="South"), Site(code="E", name="East")
        session.add_all([north, south, east])
        session.flush()
        user = User(username="both", password_hash="-", role=UserRole.RADIOLOGIST, site_id=north.id)
        session.add(user)
        session.flush()
        session.add_all([UserSite(user_id=user.id, site_id=north.id), UserSite(user_id=user.id, site_id=south.id)])
        session.flush()
        assert signer_of(session, user.id, south.id)[1] == "South"
        assert signer_of(session, user.id, north.id)[1] == "North"
        assert signer_of(session, user.id, east.id)[1] == "North"  # not theirs: their first site, never East's
        assert signer_of(session, user.id)[1] == "North"
