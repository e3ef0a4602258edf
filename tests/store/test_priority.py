"""A study's priority comes back to routine once its stat work is done (:mod:`integration.store.priority`).

Each rule that keeps a study stat (a stat order without a signed report, an unacknowledged critical alert, a stat
second opinion queued, running or not yet opened by a radiologist) is started and ended by the store functions
that do it in production: the real ingest and assembly, order messages, the worker's claim and draft, the
signature, the alert's acknowledgement, and a radiologist's reading.  On SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import replace

from pydicom.uid import generate_uid

from integration.orders.order import OrderPriority
from integration.store.alert_tables import AlertState, CriticalAlert
from integration.store.alerts import acknowledge_alert, open_alert
from integration.store.opinions import request_second_opinion
from integration.store.priority import mark_read, settle_priority, settle_priority_of
from integration.store.reports import SkippedJob, claim_job, fail_job, record_draft
from integration.store.revisions import SignedVersion, next_version, record_signed_version
from integration.store.session import session_scope
from integration.store.tables import Report, Study, UserRole, utcnow
from tests.support.order_store import a_draft, apply, drafted, ingest, message, study


def sign(url: str, report_id: int) -> None:
    """Sign the report as the review domain's store step does (the SR file itself is not needed here)."""
    with session_scope(url) as session:
        version = next_version(session, report_id)
        record_signed_version(
            session,
            SignedVersion(
                report_id=report_id,
                version=version,
                findings={},
                text="Normal.",
                author="Doe^John",
                organization="North",
                signed_at=utcnow(),
                sr_sop_instance_uid=generate_uid(),
                sr_series_uid=generate_uid(),
                sr_path=f"sr/{report_id}-{version}.dcm",
            ),
        )


def ask_stat_opinion(url: str, study_id: int) -> int:
    with session_scope(url) as session:
        row = session.get(Study, study_id)
        assert row is not None
        return request_second_opinion(
            session,
            row,
            model_name="medgemma",
            prompt_name="general",
            stat=True,
            requested_by="dr_north",
            queue="analysis.stat",
        )


def run_job(url: str, job_id: int, *, model_id: str = "medgemma-4b-it") -> int:
    """Claim the job and record its draft, as the worker does; return the report id."""
    with session_scope(url) as session:
        assert not isinstance(claim_job(session, job_id, max_attempts=3, now=utcnow()), SkippedJob)
    with session_scope(url) as session:
        return record_draft(session, job_id, replace(a_draft(), model_id=model_id), utcnow())


def read(url: str, report_id: int, role: UserRole = UserRole.RADIOLOGIST) -> bool:
    with session_scope(url) as session:
        return mark_read(session, session.get(Report, report_id), utcnow(), role=role)


def priority(url: str, study_id: int) -> str:
    return study(url, study_id).priority


def test_a_stat_order_keeps_the_study_stat_until_its_report_is_signed(url: str) -> None:
    apply(url, message(priority=OrderPriority.STAT))
    study_id = ingest(url)
    report_id = drafted(url, study_id)
    assert priority(url, study_id) == "stat"  # drafted, not signed: the order's stat work is open
    with session_scope(url) as session:
        assert settle_priority_of(session, study_id, utcnow()) == "stat"
    sign(url, report_id)
    assert priority(url, study_id) == "routine"


def test_an_unacknowledged_critical_alert_keeps_the_study_stat_and_its_reason(url: str) -> None:
    study_id = ingest(url, accession=None)
    report_id = drafted(url, study_id)
    assert priority(url, study_id) == "routine"
    with session_scope(url) as session:
        row = session.get(Study, study_id)
        assert row is not None
        alert_id = open_alert(session, row, report_id, ["PTX"], ["Pneumothorax"], utcnow())
    assert alert_id is not None
    sign(url, report_id)  # signing is not acknowledging the notification
    assert (priority(url, study_id), study(url, study_id).critical_reason) == ("stat", "Critical: Pneumothorax")
    with session_scope(url) as session:
        assert acknowledge_alert(session, alert_id, "dr_north", utcnow()) is not None
    assert (priority(url, study_id), study(url, study_id).critical_reason) == ("routine", None)


def test_a_critical_alert_closed_unacknowledged_lets_the_study_go_routine_but_keeps_its_reason(url: str) -> None:
    study_id = ingest(url, accession=None)
    report_id = drafted(url, study_id)
    with session_scope(url) as session:
        row = session.get(Study, study_id)
        assert row is not None
        alert_id = open_alert(session, row, report_id, ["PTX"], ["Pneumothorax"], utcnow())
    with session_scope(url) as session:  # its draft was superseded: the sweep closes the alert
        alert = session.get(CriticalAlert, alert_id)
        assert alert is not None
        alert.state, alert.closed_reason = AlertState.CLOSED, "draft superseded"
    with session_scope(url) as session:
        assert settle_priority_of(session, study_id, utcnow()) == "routine"
    assert study(url, study_id).critical_reason == "Critical: Pneumothorax"  # nobody acknowledged the finding


def test_a_stat_second_opinion_on_a_signed_study_is_stat_until_a_radiologist_opens_its_draft(url: str) -> None:
    study_id = ingest(url, accession=None)
    sign(url, drafted(url, study_id))
    assert priority(url, study_id) == "routine"
    job_id = ask_stat_opinion(url, study_id)
    assert priority(url, study_id) == "stat"  # queued
    with session_scope(url) as session:
        assert settle_priority_of(session, study_id, utcnow()) == "stat"
    opinion = run_job(url, job_id)
    assert priority(url, study_id) == "stat"  # drafted, nobody has read it yet
    assert read(url, opinion, UserRole.ADMIN) is False  # an administrator's look is not a reading
    assert priority(url, study_id) == "stat"
    assert read(url, opinion) is True
    assert priority(url, study_id) == "routine"
    first = study(url, study_id)
    with session_scope(url) as session:
        report = session.get(Report, opinion)
        assert report is not None and report.read_at is not None
        read_at = report.read_at
    assert read(url, opinion) is False  # the first reading is kept
    with session_scope(url) as session:
        assert session.get(Report, opinion).read_at == read_at  # type: ignore[union-attr]
    assert first.priority == "routine"


def test_a_failed_stat_second_opinion_ends_its_stat_work(url: str) -> None:
    study_id = ingest(url, accession=None)
    drafted(url, study_id)
    job_id = ask_stat_opinion(url, study_id)
    assert priority(url, study_id) == "stat"
    with session_scope(url) as session:
        fail_job(session, job_id, "the model server went away", utcnow())
    assert priority(url, study_id) == "routine"


def test_an_order_lowered_by_the_ris_while_a_stat_second_opinion_runs_stays_stat(url: str) -> None:
    apply(url, message(priority=OrderPriority.STAT))
    study_id = ingest(url)
    drafted(url, study_id)
    job_id = ask_stat_opinion(url, study_id)
    with session_scope(url) as session:
        assert not isinstance(claim_job(session, job_id, max_attempts=3, now=utcnow()), SkippedJob)
    apply(url, message("XO", priority=OrderPriority.ROUTINE, message_id="m2"))
    assert priority(url, study_id) == "stat"  # running
    with session_scope(url) as session:
        opinion = record_draft(session, job_id, replace(a_draft(), model_id="medgemma-4b-it"), utcnow())
    assert priority(url, study_id) == "stat"  # drafted, unread
    read(url, opinion)
    assert priority(url, study_id) == "routine"  # the order is routine now and the opinion was read


def test_a_routine_study_never_becomes_stat_by_settling(url: str) -> None:
    apply(url, message(priority=OrderPriority.STAT))
    study_id = ingest(url)
    drafted(url, study_id)
    with session_scope(url) as session:  # open stat work, but the study is routine (as someone set it)
        row = session.get(Study, study_id)
        assert row is not None
        row.priority = "routine"
    with session_scope(url) as session:
        row = session.get(Study, study_id)
        assert row is not None
        assert settle_priority(session, row, utcnow()) == "routine"
    assert priority(url, study_id) == "routine"
