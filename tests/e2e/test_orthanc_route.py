"""A real PACS routes studies to us: Debian's Orthanc sends them with C-STORE through its REST API.

Files are uploaded into Orthanc, Orthanc is asked to store the studies to the modality
"pacsvlm" (our listener), and the test follows them through our side: instance rows in
PostgreSQL, durable files with the same SOP instances and pixel data, the study assembled to
``queued`` with one analysis job, and that job's message waiting in Redis.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from integration.samples import write_ct_series, write_sample_studies
from tests.support.orthanc import ORTHANC, OrthancServer
from tests.support.peers import ListenerProcess, wait_until
from tests.support.records import db_rows, queued_messages

ANALYZE_STUDY = "pacs_vlm.analyze_study"
CT_SLICES = 20

pytestmark = pytest.mark.skipif(shutil.which(ORTHANC) is None, reason="Orthanc is not installed (make system-deps)")


def pixels_match(original: pydicom.Dataset, stored: pydicom.Dataset) -> bool:
    """Same encoded pixel data when the transfer syntax was kept; otherwise the same decoded pixels."""
    if "PixelData" not in original:
        return "PixelData" not in stored
    if original.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID:
        return bytes(original.PixelData) == bytes(stored.PixelData)
    return bool(np.array_equal(original.pixel_array, stored.pixel_array))


def test_orthanc_routes_studies_to_the_listener(listener: ListenerProcess, redis_url: str, tmp_path: Path) -> None:
    samples = write_sample_studies(tmp_path / "samples")
    ct_files = write_ct_series(tmp_path / "ct", CT_SLICES)
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in [*samples, *ct_files]}
    ct_study_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)

    with OrthancServer(
        {"pacsvlm": [listener.ae_title, "127.0.0.1", listener.port]}, folder=tmp_path / "orthanc"
    ) as orthanc:
        answers = {str(path): orthanc.upload(path) for path in [*samples, *ct_files]}
        ct_study = {answers[str(p)]["ParentStudy"] for p in ct_files}
        sample_studies = {answers[str(p)]["ParentStudy"] for p in samples} - ct_study
        assert len(ct_study) == 1
        assert set(orthanc.studies()) == ct_study | sample_studies

        held: dict[str, str] = {}  # SOP Instance UID -> Study Instance UID, as Orthanc holds them
        for study_id in ct_study | sample_studies:
            study_uid = orthanc.study(study_id)["MainDicomTags"]["StudyInstanceUID"]
            for instance in orthanc.study_instances(study_id):
                held[instance["MainDicomTags"]["SOPInstanceUID"]] = study_uid
        assert set(held) == set(originals), "Orthanc did not keep every uploaded instance"

        orthanc.store_to_modality("pacsvlm", sorted(ct_study))
        orthanc.store_to_modality("pacsvlm", sorted(sample_studies))
        orthanc_log = orthanc.log()

    context = f"\n--- listener log ---\n{listener.log()}\n--- Orthanc log ---\n{orthanc_log}"

    # Every instance Orthanc holds is a row in our database, in the right study, from ORTHANC.
    rows = db_rows(
        listener.database_url,
        "SELECT i.sop_instance_uid, s.study_uid, i.calling_ae, i.storage_path FROM instances i "
        "JOIN series se ON se.id = i.series_id JOIN studies s ON s.id = se.study_id",
    )
    recorded = {sop: (study_uid, calling_ae) for sop, study_uid, calling_ae, _ in rows}
    assert set(recorded) == set(held), f"missing: {set(held) - set(recorded)}{context}"
    assert all(recorded[sop] == (study_uid, "ORTHANC") for sop, study_uid in held.items())

    # ... and a durable file that parses to the same SOP instance with the same pixels.
    stored = listener.stored_files()
    assert len(stored) == len(held), context
    assert not listener.partial_files()
    seen: set[str] = set()
    for path in stored:
        copy = pydicom.dcmread(path)
        sop = str(copy.SOPInstanceUID)
        assert sop in originals, f"unexpected instance {sop} in {path}"
        assert str(copy.file_meta.MediaStorageSOPInstanceUID) == sop
        original = pydicom.dcmread(originals[sop])
        assert copy.StudyInstanceUID == original.StudyInstanceUID
        assert pixels_match(original, copy), f"pixel data of {originals[sop].name} changed on the way ({path})"
        seen.add(sop)
    assert seen == set(held)

    # The CT study is assembled and queued once, with exactly one analysis job ...
    wait_until(
        lambda: (
            db_rows(listener.database_url, "SELECT state FROM studies WHERE study_uid = :u", u=ct_study_uid)
            == [("queued",)]
        ),
        timeout=30,
        message=f"CT study queued{context}",
    )
    (study_id,) = db_rows(listener.database_url, "SELECT id FROM studies WHERE study_uid = :u", u=ct_study_uid)[0]
    jobs = wait_until(
        lambda: db_rows(
            listener.database_url,
            "SELECT id, study_version, state, queue, send_count FROM analysis_jobs WHERE study_id = :s "
            "AND sent_at IS NOT NULL",
            s=study_id,
        ),
        timeout=30,
        message="the CT study's analysis job sent",
    )
    all_jobs = db_rows(listener.database_url, "SELECT id FROM analysis_jobs WHERE study_id = :s", s=study_id)
    assert len(all_jobs) == 1 and len(jobs) == 1, f"jobs for the CT study: {all_jobs}{context}"
    job_id, version, state, queue, send_count = jobs[0]
    assert (version, state, queue, send_count) == (1, "queued", "analysis", 1)
    (n_instances,) = db_rows(
        listener.database_url,
        "SELECT count(*) FROM instances i JOIN series se ON se.id = i.series_id WHERE se.study_id = :s",
        s=study_id,
    )[0]
    assert n_instances == CT_SLICES

    # ... whose Celery message (ids only) waits in Redis.
    messages = wait_until(
        lambda: [m for m in queued_messages(redis_url) if m["args"] == [job_id]],
        timeout=10,
        message="the job's message in Redis",
    )
    assert len(messages) == 1
    message = messages[0]
    assert message["headers"]["task"] == ANALYZE_STUDY
    assert message["headers"]["id"] == f"analysis-job-{job_id}-1"
    assert message["properties"]["delivery_info"]["routing_key"] == "analysis"
    assert (message["args"], message["kwargs"]) == ([job_id], {})
