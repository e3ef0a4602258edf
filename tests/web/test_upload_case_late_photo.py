"""A photo added to a telemedicine case after its study was drafted: a new version, never mixed into the old draft.

The pipeline's rule (DESIGN.md, States) is that instances arriving after ``stable`` bump the study's version and
queue a new job, and that the old draft is superseded rather than silently mixed with the new images.  Photos
added to a case arrive the same way (as late instances of the case's study), so this test follows one through
the real routes of a ``pacs-vlm api`` process and the real assembly pass, against PostgreSQL and Redis: a case
of one photo is opened, becomes stable, is queued and drafted as the worker records drafts; then the uploader
adds a photo through ``POST /api/uploads/{case_id}/photos``.  The new photo must join the same study (same
Study Instance UID, next instance number) as version 2, the assembly must queue a job for version 2 (the
version-1 draft kept only until the version-2 draft replaces it, then ``superseded``), and the uploader must see
the case ``received`` again rather than ``drafted`` while no draft covers the photo just added.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pydicom

from integration.intake.assembly import StudyAssembler
from tests.support.records import db_rows, queued_messages
from tests.support.review_app import draft, evidence_of, ingest_settings, sites_and_users
from tests.web.conftest import ApiProcess
from tests.web.test_upload_cases import Module, client, photo


def status_of(owner: httpx.Client, case_id: int) -> tuple[str, str]:
    """The case's status as the JSON API and the case page show it."""
    answer = owner.get(f"/api/uploads/{case_id}")
    assert answer.status_code == 200, answer.text
    page = owner.get(f"/uploads/{case_id}")
    found = re.search(r'id="case-status">([a-z]+)<', page.text)
    assert page.status_code == 200 and found, page.text[:500]
    return answer.json()["status"], found.group(1)


def test_a_photo_added_after_the_draft_makes_a_new_version_and_a_new_job(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    settings = ingest_settings(url, redis_url, tmp_path)
    sites_and_users(url)  # upload: an uploader of NORTH
    api = ApiProcess(
        tmp_path / "api",
        {
            "PACSVLM_MIN_FREE_BYTES": "0",
            "PACSVLM_DATABASE_URL": url,
            "PACSVLM_BROKER_URL": redis_url,
            "PACSVLM_STORAGE_DIR": str(settings.instance_root),
        },
    ).start()
    try:
        owner = client(Module(settings, api), "upload")
        form = {
            "patient_id": "LATE-1",
            "family_name": "Verdi",
            "given_name": "Giulia",
            "birth_date": "1969-02-11",
            "sex": "F",
            "body_part": "LEG",
            "laterality": "R",
            "clinical_question": "Ulcer on the right shin for six weeks: venous or arterial?",
            "recognizable_features": "NO",
        }
        first = photo(tmp_path, "first.png", 1).read_bytes()
        created = owner.post("/api/uploads/photo", data=form, files={"file": ("first.png", first, "image/png")})
        assert created.status_code == 201, created.text
        case_id = created.json()["case_id"]
        [(study_uid, study_id)] = db_rows(url, "SELECT study_uid, id FROM studies")
        assert status_of(owner, case_id) == ("received", "received")

        assembler = StudyAssembler(settings)
        passed = assembler.run_once()  # a photo is complete as it arrives: stable at once, then queued
        assert (passed.jobs_created, passed.sent) == (1, 1)
        assert db_rows(url, "SELECT state, version FROM studies") == [("queued", 1)]
        [(path_text,)] = db_rows(url, "SELECT storage_path FROM instances")
        first_ds = pydicom.dcmread(settings.instance_root / path_text)
        old_draft = draft(settings, study_uid, [{"text": "Venous ulcer.", "images": [1]}], [evidence_of(first_ds, 1)])
        assert db_rows(url, "SELECT state, version FROM studies") == [("drafted", 1)]
        assert status_of(owner, case_id) == ("drafted", "drafted")

        second = photo(tmp_path, "second.png", 2).read_bytes()
        added = owner.post(f"/api/uploads/{case_id}/photos", files={"file": ("second.png", second, "image/png")})
        assert added.status_code == 201, added.text  # a late photo is taken, not refused
        [new_uid] = added.json()["sop_instance_uids"]
        assert db_rows(url, "SELECT state, version FROM studies") == [("receiving", 2)]
        rows = db_rows(
            url,
            "SELECT i.sop_instance_uid, i.instance_number, i.study_version, s.study_id, i.storage_path"
            " FROM instances i JOIN series s ON i.series_id = s.id ORDER BY i.instance_number",
        )
        assert [row[:4] for row in rows] == [
            (str(first_ds.SOPInstanceUID), 1, 1, study_id),
            (new_uid, 2, 2, study_id),
        ]
        new_ds = pydicom.dcmread(settings.instance_root / rows[1][4])
        assert (new_ds.StudyInstanceUID, int(new_ds.InstanceNumber), int(new_ds.SeriesNumber)) == (study_uid, 2, 2)
        assert new_ds.SeriesInstanceUID != first_ds.SeriesInstanceUID  # a series per batch
        assert status_of(owner, case_id) == ("received", "received")  # no draft covers the photo just added

        passed = assembler.run_once()
        assert (passed.jobs_created, passed.sent) == (1, 1)
        assert db_rows(url, "SELECT state, version FROM studies") == [("queued", 2)]
        assert db_rows(url, "SELECT study_version, state FROM analysis_jobs ORDER BY id") == [
            (1, "done"),
            (2, "queued"),
        ]
        jobs = dict(db_rows(url, "SELECT study_version, id FROM analysis_jobs"))
        assert sorted(message["args"][0] for message in queued_messages(redis_url)) == [jobs[1], jobs[2]]
        # the version-1 draft stays what it was (covering photo 1 only) until the version-2 draft replaces it
        assert db_rows(url, "SELECT id, study_version, status FROM reports") == [(old_draft, 1, "draft")]
        assert status_of(owner, case_id) == ("received", "received")

        new_draft = draft(
            settings,
            study_uid,
            [{"text": "Venous ulcer, second view alike.", "images": [1, 2]}],
            [evidence_of(first_ds, 1), evidence_of(new_ds, 2)],
        )
        assert db_rows(url, "SELECT id, study_version, status FROM reports ORDER BY id") == [
            (old_draft, 1, "superseded"),
            (new_draft, 2, "draft"),
        ]
        assert db_rows(url, "SELECT state, version FROM studies") == [("drafted", 2)]
        assert status_of(owner, case_id) == ("drafted", "drafted")
        detail = owner.get(f"/api/uploads/{case_id}").json()
        assert [(image["sop_instance_uid"], image["instance_number"]) for image in detail["images"]] == [
            (str(first_ds.SOPInstanceUID), 1),
            (new_uid, 2),
        ]
        assert detail["photos"] == 2 and detail["signed"] == []
    finally:
        api.stop()
