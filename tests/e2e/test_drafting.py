"""The whole path with real parts: dcmtk storescu -> listener -> Redis -> Celery worker -> tiny model -> draft row."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom

from integration.samples import pydicom_test_file, write_ct_series
from tests.support.peers import ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows


def reports(url: str) -> list[tuple]:
    return db_rows(
        url,
        "SELECT r.id, s.study_uid, r.status, r.ai_generated, r.verification, r.model_family, r.prompt_version,"
        " r.evidence, r.timings, r.tokens_in, r.tokens_out, r.text, r.structured, r.study_version"
        " FROM reports r JOIN studies s ON s.id = r.study_id ORDER BY r.id",
    )


def test_storescu_to_a_draft_in_postgres(
    listener: ListenerProcess,
    worker_factory: Callable[..., WorkerProcess],
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    series = write_ct_series(tmp_path / "ct", 12, rows=64, columns=64)
    radiograph = pydicom_test_file("CT_small.dcm")
    assert storescu(listener.port, [*series, radiograph]).returncode == 0
    worker = worker_factory(listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir)
    wait_until(
        lambda: len(reports(listener.database_url)) == 2,
        timeout=240,
        message=f"two drafts; worker log:\n{worker.log()[-3000:]}",
    )
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in [*series, radiograph]}
    ct_study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    rows = {row[1]: row for row in reports(listener.database_url)}
    (_, _, status, ai, verification, family, prompt, evidence, timings, tokens_in, tokens_out, text, _, version) = rows[
        ct_study
    ]
    assert (status, ai, verification, family, version) == ("draft", True, "UNVERIFIED", "llava", 1)
    assert prompt.startswith("ct")
    assert text.startswith("AI-generated draft, not verified by a radiologist.")
    seen = [e["sop_instance_uid"] for e in evidence]
    assert seen and set(seen) <= set(sent) and all(e["frame"] >= 1 for e in evidence)
    assert [e["image"] for e in evidence] == sorted(e["image"] for e in evidence)
    assert {"generate_s", "load_s", "prompt_s"} <= set(timings)
    assert tokens_in > 0 and 0 < tokens_out <= 16
    states = db_rows(
        listener.database_url,
        "SELECT s.state, j.state, j.attempts FROM studies s JOIN analysis_jobs j ON j.study_id = s.id",
    )
    assert sorted(states) == [("drafted", "done", 1)] * 2
