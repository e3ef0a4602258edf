"""The whole path with a prior: storescu -> listener (prefetch by C-GET from Orthanc) -> worker -> draft and SR.

Orthanc (the shared :func:`tests.support.priors.prior_pacs`) is the hospital's PACS holding the patient's
prior chest CT with its SR report; ``pacs-vlm listen`` fetches it while the current study arrives, the
study's job waits for it, and a ``pacs-vlm worker`` with a tiny multi-image model (MedGemma architecture)
drafts the study with the prior: the draft names the comparison study, cites prior images with their
study, and its SR references them in the Pertinent Other Evidence Sequence and passes dciodvfy.  With the
PACS down, the same path drafts the study without its prior and says why, in the draft and its SR.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from integration.findings import Document
from integration.prior_sources import PriorSource
from integration.reports.sr import read_sr
from tests.support.peers import ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.priors import PriorPacs, build_current_study
from tests.support.records import db_rows
from tests.support.services import free_port
from tests.support.sr_tools import check_with_tools


@dataclass(frozen=True)
class Drafted:
    """A current study sent by storescu to ``pacs-vlm listen`` with one prior source, and its draft's row."""

    listener: ListenerProcess
    study_uid: str
    findings: dict[str, Any]
    evidence: list[dict[str, Any]]
    text: str
    sr_path: str


def drafted_with(
    source: PriorSource,
    listener_factory: Callable[..., ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    database_url: str,
    broker_url: str,
    model_dir: Path,
) -> Drafted:
    """Start the listener with ``source`` and a worker on ``model_dir``, send a 4-slice CT, wait for its draft SR."""
    listener = listener_factory(
        database_url,
        broker_url,
        stable_seconds=0.5,
        extra_env={
            "PACSVLM_PRIOR_SOURCES": json.dumps([source.model_dump(mode="json")]),
            "PACSVLM_PRIOR_WAIT_SECONDS": "60",
        },
    )
    current = build_current_study(listener.data_dir / "sent", slices=4)
    assert storescu(listener.port, current.files).returncode == 0
    worker = worker_factory(listener.data_dir, listener.database_url, listener.broker_url, model_dir)
    query = (
        "SELECT r.findings, r.evidence, r.text, r.sr_path FROM reports r JOIN studies s ON s.id = r.study_id"
        f" WHERE s.study_uid = '{current.uid}' AND r.sr_path IS NOT NULL"  # a UID we generated: digits and dots
    )
    wait_until(
        lambda: db_rows(listener.database_url, query),
        timeout=240,
        message=f"a draft; listener:\n{listener.log()[-2000:]}\nworker:\n{worker.log()[-3000:]}",
    )
    ((findings, evidence, text, sr_path),) = db_rows(listener.database_url, query)
    return Drafted(listener, current.uid, findings, evidence, text, sr_path)


def test_a_study_is_drafted_against_its_prior_fetched_from_the_pacs(
    listener_factory: Callable[..., ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    prior_pacs: PriorPacs,
    smoke_medgemma_dir: Path,
) -> None:
    source = prior_pacs.source("dimse", name="pacs-get")
    drafted = drafted_with(
        source, listener_factory, worker_factory, migrated_postgres_url, redis_url, smoke_medgemma_dir
    )  # fmt: skip
    listener, url, findings, evidence, text = (
        drafted.listener, drafted.listener.database_url, drafted.findings, drafted.evidence, drafted.text
    )  # fmt: skip
    prior_uid = prior_pacs.data.ct.uid
    document = Document.read(findings)
    assert [p.study_uid for p in document.priors] == [prior_uid] and document.priors[0].report_source == "sr"
    assert document.prior_note == "" and "COMPARISON:" in text
    prior_images = [e for e in evidence if e.get("prior")]
    assert prior_images and {e["study_uid"] for e in prior_images} == {prior_uid}
    chosen = set(prior_pacs.data.ct.series_named("Chest 2.5mm").instance_uids)
    assert {e["sop_instance_uid"] for e in prior_images} <= chosen  # the thin axial series, nothing else
    assert min(e["image"] for e in evidence if not e.get("prior")) > max(e["image"] for e in prior_images)
    # only the current study was drafted; the prior is stored, marked, never queued
    roles = dict(db_rows(url, "SELECT study_uid, role FROM studies"))
    assert roles == {drafted.study_uid: "current", prior_uid: "prior"}
    jobs = db_rows(url, "SELECT s.study_uid FROM analysis_jobs j JOIN studies s ON s.id = j.study_id")
    assert jobs == [(drafted.study_uid,)]

    sr_file = listener.data_dir / drafted.sr_path
    check_with_tools(sr_file)
    reading = read_sr(pydicom.dcmread(sr_file))
    assert {study for study, _ in reading.other_evidence} == {prior_uid}
    assert reading.comparison is not None


def test_with_the_pacs_down_the_study_is_drafted_without_its_prior_and_says_why(
    listener_factory: Callable[..., ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    prior_pacs: PriorPacs,
    smoke_medgemma_dir: Path,
) -> None:
    down = prior_pacs.source("dimse", name="pacs-down", port=free_port())  # nobody listens there
    drafted = drafted_with(down, listener_factory, worker_factory, migrated_postgres_url, redis_url, smoke_medgemma_dir)
    url, current_uid = drafted.listener.database_url, drafted.study_uid
    ((state, reason),) = db_rows(
        url, f"SELECT p.state, p.reason FROM prior_searches p JOIN studies s ON s.id = p.study_id"
        f" WHERE s.study_uid = '{current_uid}'",
    )  # fmt: skip
    assert state == "failed" and reason.startswith("pacs-down: ")  # the reason is recorded ...
    document = Document.read(drafted.findings)
    assert document.priors == () and not any(e.get("prior") for e in drafted.evidence)
    assert document.prior_note == f"Prior study not available: {reason}."  # ... and the draft says it
    assert "Prior study not available" in drafted.text
    reading = read_sr(pydicom.dcmread(drafted.listener.data_dir / drafted.sr_path))
    assert reading.other_evidence == () and reading.comparison.priors == ()
    assert any("Prior study not available" in statement for statement in reading.comparison.statements)
    assert dict(db_rows(url, "SELECT study_uid, role FROM studies")) == {current_uid: "current"}
