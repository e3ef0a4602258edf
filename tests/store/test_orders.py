"""RIS orders in the store: order controls and their history, and matching studies to orders.

Studies are recorded by the real ingest (``record_instance``) and completed by the real assembly step
(``complete_stable_studies``), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from integration.intake.study_attributes import record_study_attributes
from integration.orders.order import OrderPriority
from integration.samples import write_ct_series
from integration.store.jobs import complete_stable_studies
from integration.store.order_tables import Order, OrderEvent, OrderStatus
from integration.store.orders import (
    NO_PATIENT_ID,
    OTHER_PATIENT,
    OTHER_SITE,
    OrderResult,
    link_order,
    order_for_study,
)
from integration.store.session import session_scope
from integration.store.tables import (
    ROLE_PRIOR,
    AnalysisJob,
    Site,
    Study,
    utcnow,
)
from tests.support.order_store import ACCESSION, PATIENT, apply, complete, ingest, message, study

# ------------------------------------------------------------------ order controls and history


def test_new_order_is_stored_with_its_history_and_a_resend_changes_nothing(url: str) -> None:
    scheduled = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)
    first = apply(
        url,
        message(
            indication="Cough; pneumonia?",
            priority=OrderPriority.ROUTINE,
            procedure_code="CTCH",
            procedure_text="CT chest",
            ordering_provider="Dr Who",
            modality="CT",
            scheduled_at=scheduled,
        ),
    )
    assert first.outcome == "created" and first.order_id is not None and first.reason is None
    assert first.studies == [] and first.withdrawn_reports == []
    again = apply(url, message(indication="Cough; pneumonia?", procedure_text="CT chest", message_id="m2"))
    assert (again.outcome, again.order_id) == ("unchanged", first.order_id)
    changed = apply(url, message("XO", indication="Fever", priority=OrderPriority.STAT, message_id="m3"))
    assert changed.outcome == "changed"
    with session_scope(url) as session:
        order = session.get(Order, first.order_id)
        assert order is not None
        assert (order.indication, order.priority, order.procedure_text) == ("Fever", "stat", "CT chest")
        assert order.scheduled_at == scheduled and order.source == "hl7" and order.sender == "RIS^NORTH"
        events = session.scalars(select(OrderEvent).order_by(OrderEvent.id)).all()
        assert [(e.control, e.message_id) for e in events] == [("NW", "m1"), ("NW", "m2"), ("XO", "m3")]
        assert events[2].detail == {
            "outcome": "changed",
            "changed": ["indication", "priority"],
            "status_before": "scheduled",
            "status_after": "scheduled",
        }
        assert "Fever" not in str([e.detail for e in events])  # field names, never values


def test_cancel_discontinue_and_what_is_refused(url: str) -> None:
    refused = apply(url, message("CA"))
    assert (refused.outcome, refused.order_id) == ("refused", None)
    assert refused.reason == "CA for an order we do not hold"
    assert apply(url, message("DC")).reason == "DC for an order we do not hold"
    created = apply(url, message())
    assert apply(url, message("DC")).outcome == "discontinued"
    assert apply(url, message("CA")).outcome == "cancelled"
    assert apply(url, message("CA")).outcome == "unchanged"
    assert apply(url, message("DC")).outcome == "unchanged"  # a cancelled order stays cancelled
    late = apply(url, message("XO", indication="x"))
    assert (late.outcome, late.reason) == ("refused", "XO for an order that is cancelled")
    assert apply(url, message("NW")).outcome == "refused"
    with session_scope(url) as session:
        order = session.get(Order, created.order_id)
        assert order is not None and order.status == OrderStatus.CANCELLED.value
        details = [e.detail for e in session.scalars(select(OrderEvent).order_by(OrderEvent.id))]
        assert [(d or {})["status_after"] for d in details] == ["scheduled", "discontinued", "cancelled"] + [
            "cancelled"
        ] * 2


def test_an_xo_for_an_order_not_held_creates_it_and_another_site_cannot_change_it(url: str) -> None:
    with session_scope(url) as session:
        north, south = Site(code="NORTH", name="North"), Site(code="SOUTH", name="South")
        session.add_all([north, south])
        session.flush()
        north_id, south_id = north.id, south.id
    assert apply(url, message("XO", indication="x"), site_id=north_id).outcome == "created"
    other = apply(url, message("CA"), site_id=south_id)
    assert (other.outcome, other.reason) == ("refused", "the order belongs to another site")
    assert apply(url, message("CA"), site_id=north_id).outcome == "cancelled"


def test_issuers_keep_patients_apart_and_an_order_without_issuer_is_found_by_one_with(url: str) -> None:
    north = apply(url, message(issuer_of_patient_id="NORTH"))
    south = apply(url, message(issuer_of_patient_id="SOUTH"))
    assert north.outcome == south.outcome == "created" and north.order_id != south.order_id
    # no issuer sent, two orders of that ID with issuers: ambiguous, so a new order (issuer "") is made
    assert apply(url, message()).outcome == "created"
    # an order without issuer is found by a message with one, when it is the only compatible one
    alone = apply(url, message(accession_number="ACC200"))
    assert apply(url, message("XO", accession_number="ACC200", issuer_of_patient_id="EAST")).order_id == (
        alone.order_id
    )


# ------------------------------------------------------------------ matching


def test_a_study_after_its_order_is_linked_at_ingest_and_a_stat_order_makes_it_stat(url: str) -> None:
    order = apply(url, message(indication="Chest pain", priority=OrderPriority.STAT, modality="CT"))
    study_id = ingest(url)
    row = study(url, study_id)
    assert row.order_id == order.order_id and row.order_problem is None and row.priority == "stat"
    assert (row.accession_number, row.patient_id) == (ACCESSION, PATIENT)
    with session_scope(url) as session:
        view = order_for_study(session, study_id)
    assert view is not None and (view.indication, view.priority, view.modality) == ("Chest pain", "stat", "CT")
    assert view.status == "scheduled" and not view.stopped
    (job_id,) = complete(url)
    with session_scope(url) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None and (job.queue, job.priority) == ("analysis.stat", "stat")


def test_an_order_after_its_study_still_links_it(url: str) -> None:
    study_id = ingest(url, issuer="NORTH")
    assert study(url, study_id).order_id is None and study(url, study_id).order_problem is None
    result = apply(url, message(issuer_of_patient_id="NORTH", priority=OrderPriority.STAT))
    assert result.studies == [study_id]
    assert study(url, study_id).order_id == result.order_id and study(url, study_id).priority == "stat"
    (job_id,) = complete(url)
    with session_scope(url) as session:
        assert session.get(AnalysisJob, job_id).queue == "analysis.stat"  # type: ignore[union-attr]


def test_another_patients_order_is_never_merged_but_flagged(url: str) -> None:
    apply(url, message(patient_id="MRN2"))
    study_id = ingest(url)
    row = study(url, study_id)
    assert row.order_id is None and row.order_problem == OTHER_PATIENT
    # same ID of another issuer: another patient
    apply(url, message(accession_number="ACC300", issuer_of_patient_id="SOUTH"))
    other_issuer = ingest(url, accession="ACC300", issuer="NORTH")
    assert study(url, other_issuer).order_problem == OTHER_PATIENT
    # the study's patient's order arrives later: linked, flag gone
    result = apply(url, message())
    assert result.studies == [study_id]
    row = study(url, study_id)
    assert row.order_id == result.order_id and row.order_problem is None
    # an order for another patient arriving after the study flags it too
    late = ingest(url, accession="ACC400")
    assert apply(url, message(accession_number="ACC400", patient_id="MRN9")).studies == []
    assert study(url, late).order_problem == OTHER_PATIENT
    no_patient = ingest(url, accession="ACC400", patient=None)
    assert study(url, no_patient).order_problem == NO_PATIENT_ID


def test_either_side_without_issuer_matches(url: str) -> None:
    apply(url, message(issuer_of_patient_id="NORTH"))
    assert study(url, ingest(url)).order_id is not None
    apply(url, message(accession_number="ACC500"))
    assert study(url, ingest(url, accession="ACC500", issuer="SOUTH")).order_id is not None


def test_another_sites_order_is_not_linked(url: str) -> None:
    with session_scope(url) as session:
        north, south = Site(code="NORTH", name="North"), Site(code="SOUTH", name="South")
        session.add_all([north, south])
        session.flush()
        north_id, south_id = north.id, south.id
    apply(url, message(), site_id=north_id)
    southern = ingest(url, site_id=south_id)
    assert study(url, southern).order_id is None and study(url, southern).order_problem == OTHER_SITE
    assert study(url, ingest(url, site_id=north_id)).order_id is not None


def test_priors_are_never_linked(url: str) -> None:
    apply(url, message())
    now = utcnow()
    with session_scope(url) as session:
        prior = Study(
            study_uid=generate_uid(),
            calling_ae="PACS",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
            role=ROLE_PRIOR,
            accession_number=ACCESSION,
            patient_id=PATIENT,
        )
        session.add(prior)
        session.flush()
        link_order(session, prior)
        assert prior.order_id is None and prior.order_problem is None
        prior_id = prior.id
    assert apply(url, message("XO", indication="x")).studies == []
    assert study(url, prior_id).order_id is None


# ------------------------------------------------------------------ concurrency (PostgreSQL)


def test_concurrent_new_orders_for_one_key_make_one_order(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    results: list[OrderResult] = []
    barrier = threading.Barrier(4)

    def send(index: int) -> None:
        barrier.wait()
        results.append(apply(url, message(message_id=f"m{index}", indication=f"q{index % 2}")))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.outcome for r in results).count("created") == 1
    assert len({r.order_id for r in results}) == 1
    with session_scope(url) as session:
        assert len(session.scalars(select(Order)).all()) == 1
        assert len(session.scalars(select(OrderEvent)).all()) == 4


def test_the_worklist_attributes_of_a_completed_study_match_it_again(url: str, tmp_path: Path) -> None:
    """A first instance without an accession number is not linked; the stored header read on completion is."""
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=16, columns=16)
    ds = pydicom.dcmread(path)
    ds.AccessionNumber, ds.PatientID = ACCESSION, PATIENT
    ds.save_as(path)
    order_id = apply(url, message(priority=OrderPriority.STAT)).order_id
    study_id = ingest(url, accession=None, storage_path=str(path.relative_to(tmp_path)))
    assert study(url, study_id).order_id is None
    with session_scope(url) as session:
        jobs = complete_stable_studies(session, utcnow(), "analysis")
    with session_scope(url) as session:
        assert record_study_attributes(session, tmp_path, jobs) == 1
    row = study(url, study_id)
    assert (row.order_id, row.priority, row.accession_number) == (order_id, "stat", ACCESSION)


def test_a_change_to_routine_lowers_the_study_unless_a_stat_second_opinion_is_open(url: str) -> None:
    apply(url, message(priority=OrderPriority.STAT))
    study_id = ingest(url)
    assert study(url, study_id).priority == "stat"
    apply(url, message("XO", priority=OrderPriority.ROUTINE))
    assert study(url, study_id).priority == "routine"
    apply(url, message("XO", priority=OrderPriority.STAT))
    with session_scope(url) as session:  # a radiologist's stat second opinion, still queued
        session.add(
            AnalysisJob(
                study_id=study_id, study_version=1, queue="analysis.stat", priority="stat", purpose="second_opinion"
            )
        )
    apply(url, message("XO", priority=OrderPriority.ROUTINE))
    assert study(url, study_id).priority == "stat"
