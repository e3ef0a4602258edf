"""The transaction rule (docs/architecture.md, issue 14): store functions add and flush, the caller commits.

Each store function that used to commit is called in a session scope that then fails: the scope rolls back
and nothing the function did is left in the database, so a caller's failure after the call never leaves a
use case half done.  A positive control in the same session shows that the call did write something.  A
scan of ``integration/store`` finds every commit and rollback left, each a named exception with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.deliveries import (
    PlannedDelivery,
    create_deliveries,
    deliveries_to_resend,
    mark_delivered,
    mark_failed,
    retry_deliveries,
    start_attempt,
    subject_of,
)
from integration.store.jobs import complete_stable_studies, mark_sent, record_job_error
from integration.store.opinions import request_second_opinion
from integration.store.reports import DraftRecord, claim_job, fail_job, record_draft
from integration.store.revisions import SignedVersion, fix_draft_sr_uids, record_draft_sr_path, record_signed_version
from integration.store.session import session_scope
from integration.store.sign_in_throttle import attempt_succeeded
from integration.store.tables import (
    AnalysisJob,
    Base,
    Delivery,
    DeliveryState,
    Instance,
    JobState,
    Report,
    ReportPurpose,
    ReportStatus,
    Series,
    SignInThrottle,
    Site,
    Study,
    StudyState,
    User,
    UserRole,
    UserSession,
    utcnow,
)
from integration.store.users import (
    activate_user,
    authenticate,
    create_session,
    create_site,
    create_user,
    deactivate_user,
    end_session,
    hash_token,
    user_for_token,
)

STORE = Path(__file__).resolve().parents[2] / "integration" / "store"
PASSWORD = "correct horse battery staple"
TOKEN = "a-session-token"
SOURCE = "10.0.0.1"

#: The commits and rollbacks left in integration/store: (module, function, method) -> why it is there.
EXCEPTIONS = {
    ("session.py", "session_scope", "commit"): "the one commit of a use case",
    ("session.py", "session_scope", "rollback"): "the use case failed",
    ("ingest.py", "record_instance", "commit"): "the durable-file hook: the rows commit once the file is on disk",
    ("ingest.py", "record_instance", "rollback"): "the durable-file hook: the file was not made durable",
    ("reviews.py", "review_lock", "commit"): "an advisory lock on a connection of its own, held across scopes",
}


class Boom(Exception):
    """The caller's failure after the store call."""


@dataclass(frozen=True)
class World:
    """Ids of the seeded rows."""

    alice: int
    queued_job: int
    drafted_study: int
    report: int
    pending: int
    dead: int


def _study(session: Session, uid: str, state: StudyState, stable_after: Any) -> Study:
    now = utcnow()
    study = Study(
        study_uid=uid,
        state=state,
        version=1,
        calling_ae="CT1",
        first_received_at=now,
        last_received_at=now,
        stable_after=stable_after,
    )
    session.add(study)
    session.flush()
    series = Series(series_uid=f"{uid}.1", study_id=study.id, modality="CT", body_part="CHEST")
    session.add(series)
    session.flush()
    session.add(
        Instance(
            sop_instance_uid=f"{uid}.1.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            series_id=series.id,
            study_version=1,
            storage_path=f"{uid}/1.dcm",
            size_bytes=10,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            calling_ae="CT1",
            received_at=now,
        )
    )
    return study


def a_draft(model_id: str = "smoke/llava") -> DraftRecord:
    return DraftRecord(
        model_id=model_id,
        model_revision="abc123",
        model_family="llava",
        prompt_version="ct-chest/v1",
        structured=True,
        findings={"findings": [{"text": "Normal", "images": [1]}]},
        text="AI-generated draft, not verified by a radiologist.",
        raw_output="{}",
        evidence=[{"image": 1, "sop_instance_uid": "1.2.3.2.1.1", "frame": 1}],
        timings={"generate_s": 1.0},
        tokens_in=100,
        tokens_out=20,
    )


def seed(url: str) -> World:
    now = utcnow()
    old = now - timedelta(hours=1)
    outdated = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)  # authenticate rehashes
    with session_scope(url) as session:
        site = Site(code="NORTH", name="North")
        session.add(site)
        session.flush()
        alice = User(username="alice", password_hash=outdated, role=UserRole.RADIOLOGIST, site_id=site.id, active=True)
        bob = User(username="bob", password_hash=outdated, role=UserRole.ADMIN, site_id=None, active=False)
        session.add_all([alice, bob])
        session.flush()
        session.add(
            UserSession(
                token_hash=hash_token(TOKEN),
                user_id=alice.id,
                created_at=old,
                expires_at=now + timedelta(hours=1),
                last_seen_at=old,  # seen long ago: user_for_token notes it again (at most once a minute)
            )
        )
        for username in ("alice", ""):
            session.add(
                SignInThrottle(username=username, source=SOURCE, failures=2, last_attempt_at=old, next_attempt_at=old)
            )
        queued = _study(session, "1.2.3.1", StudyState.QUEUED, old)
        queued_job = AnalysisJob(study_id=queued.id, study_version=1, queue="analysis", state=JobState.QUEUED)
        drafted = _study(session, "1.2.3.2", StudyState.DRAFTED, old)
        done_job = AnalysisJob(study_id=drafted.id, study_version=1, queue="analysis", state=JobState.DONE)
        _study(session, "1.2.3.3", StudyState.RECEIVING, old)  # idle past its timer: complete_stable_studies
        session.add_all([queued_job, done_job])
        session.flush()
        report = Report(
            study_id=drafted.id,
            job_id=done_job.id,
            study_version=1,
            status=ReportStatus.DRAFT,
            purpose=ReportPurpose.PRIMARY,
            created_at=old,
            **a_draft().__dict__,
        )
        session.add(report)
        session.flush()
        deliveries = [
            Delivery(
                report_id=report.id,
                subject=subject_of(report.id, None),
                destination=destination,
                document="sr",
                state=state,
                attempts=attempts,
                next_attempt_at=old if state is DeliveryState.PENDING else None,
                created_at=old,
            )
            for destination, state, attempts in (
                ("pacs", DeliveryState.PENDING, 1),
                ("ris", DeliveryState.DEAD_LETTER, 5),
            )
        ]
        session.add_all(deliveries)
        session.flush()
        return World(alice.id, queued_job.id, drafted.id, report.id, deliveries[0].id, deliveries[1].id)


def _signed(world: World) -> SignedVersion:
    return SignedVersion(
        report_id=world.report,
        version=2,
        findings={"findings": [{"text": "Normal", "images": [1]}]},
        text="Signed.",
        author="Doe^Alice",
        organization="North",
        signed_at=utcnow(),
        sr_sop_instance_uid="1.2.3.9.1",
        sr_series_uid="1.2.3.9",
        sr_path="reports/1.2.3.2/1.2.3.9.1.dcm",
    )


def _user(session: Session, world: World) -> User:
    user = session.get(User, world.alice)
    assert user is not None
    return user


def _study_of(session: Session, world: World) -> Study:
    study = session.get(Study, world.drafted_study)
    assert study is not None
    return study


#: Each store function that used to commit (or never did: add_event), called as a use case would.
CALLS: dict[str, Callable[[Session, World], object]] = {
    "users.create_site": lambda s, w: create_site(s, "SOUTH", "South"),
    "users.create_user": lambda s, w: create_user(s, "carol", PASSWORD, UserRole.ADMIN, None),
    "users.authenticate (rehash)": lambda s, w: authenticate(s, "alice", PASSWORD),
    "users.create_session": lambda s, w: create_session(s, _user(s, w), timedelta(hours=1)),
    "users.user_for_token": lambda s, w: user_for_token(s, TOKEN),
    "users.end_session": lambda s, w: end_session(s, TOKEN),
    "users.deactivate_user": lambda s, w: deactivate_user(s, "alice", actor="test"),
    "users.activate_user": lambda s, w: activate_user(s, "bob", actor="test"),
    "sign_in_throttle.attempt_succeeded": lambda s, w: attempt_succeeded(s, "alice", SOURCE),
    "jobs.complete_stable_studies": lambda s, w: complete_stable_studies(s, utcnow(), "analysis"),
    "jobs.mark_sent": lambda s, w: mark_sent(s, w.queued_job, utcnow()),
    "jobs.record_job_error": lambda s, w: record_job_error(s, w.queued_job, "broker: away"),
    "opinions.request_second_opinion": lambda s, w: request_second_opinion(
        s, _study_of(s, w), model_name="second", prompt_name=None, stat=True, requested_by="alice", queue="stat"
    ),
    "reports.claim_job": lambda s, w: claim_job(s, w.queued_job, max_attempts=3, now=utcnow()),
    "reports.fail_job": lambda s, w: fail_job(s, w.queued_job, "no image", utcnow()),
    "reports.record_draft": lambda s, w: record_draft(s, w.queued_job, a_draft("other/model"), utcnow()),
    "revisions.fix_draft_sr_uids": lambda s, w: fix_draft_sr_uids(s, w.report, "1.2.3.8.1", "1.2.3.8"),
    "revisions.record_draft_sr_path": lambda s, w: record_draft_sr_path(s, w.report, "reports/x.dcm"),
    "revisions.record_signed_version": lambda s, w: record_signed_version(s, _signed(w)),
    "deliveries.create_deliveries": lambda s, w: create_deliveries(
        s, w.report, None, [PlannedDelivery("viewer", "pdf")], utcnow()
    ),
    "deliveries.start_attempt": lambda s, w: start_attempt(s, w.pending),
    "deliveries.mark_delivered": lambda s, w: mark_delivered(s, w.pending, utcnow()),
    "deliveries.mark_failed": lambda s, w: mark_failed(s, w.pending, "refused", dead=True, next_attempt_at=None),
    "deliveries.retry_deliveries": lambda s, w: retry_deliveries(s, None, utcnow()),
    "deliveries.deliveries_to_resend": lambda s, w: deliveries_to_resend(s, utcnow(), 60.0, everything=False),
    "audit.add_event": lambda s, w: add_event(s, actor="test", action="test.event"),
}


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, as this session sees it."""
    return {
        table.name: sorted((tuple(row) for row in session.execute(select(table))), key=repr)
        for table in Base.metadata.sorted_tables
    }


def test_a_caller_that_fails_after_a_store_call_leaves_nothing_written(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    world = seed(url)
    with session_scope(url) as session:
        before = snapshot(session)
    for name, call in CALLS.items():
        with pytest.raises(Boom), session_scope(url) as session:
            call(session, world)
            session.flush()
            assert snapshot(session) != before, f"{name} wrote nothing: the control failed"
            raise Boom(name)
        with session_scope(url) as session:
            assert snapshot(session) == before, f"{name} left rows behind after its caller's scope rolled back"


def _transaction_calls(path: Path) -> set[tuple[str, str, str]]:
    """(module, innermost function, method) of each ``.commit()`` and ``.rollback()`` call in a module."""
    found: set[tuple[str, str, str]] = set()

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in ("commit", "rollback")
                and not child.args
            ):
                found.add((path.name, function, child.func.attr))
            visit(child, name)

    visit(ast.parse(path.read_text(encoding="utf-8")), "<module>")
    return found


def test_no_store_function_commits_or_rolls_back_but_the_named_exceptions() -> None:
    found = set().union(*(_transaction_calls(path) for path in sorted(STORE.glob("*.py"))))
    unexpected = sorted(found - EXCEPTIONS.keys())
    assert not unexpected, f"store functions own no transaction (docs/architecture.md): {unexpected}"
