"""Worklist attributes filled when a study becomes stable: real files in the instance store, PostgreSQL, Redis."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.intake.study_attributes import StudyAttributes, read_study_attributes
from integration.samples import pydicom_test_file
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, Study, StudyState, utcnow
from tests.support.instances import ingest

CALLING_AE = "CT1"


@pytest.fixture
def settings(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=migrated_postgres_url,
        broker_url=redis_url,
        data_dir=tmp_path,
        stable_seconds=1,
        calling_aes={CALLING_AE: {}},
    )


def study(settings: Settings, uid: str) -> Study:
    with session_scope(settings.database_url) as session:
        found = session.scalars(select(Study).where(Study.study_uid == uid)).one()
        session.expunge(found)
        return found


def test_reads_only_the_named_attributes_of_a_real_file() -> None:
    attributes = read_study_attributes(pydicom_test_file("CT_small.dcm"))
    assert attributes == StudyAttributes(
        patient_id="1CT1",
        patient_name="CompressedSamples^CT1",
        patient_birth_date=None,  # present but empty
        patient_sex="O",
        accession_number=None,
        study_date="20040119",
        study_description="e+1",
    )


def test_values_are_cleaned_and_cut_to_the_column_lengths(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    ds.PatientName = "Doe^Jane\x1b[31m"
    ds.StudyDescription = "D" * 100
    ds.AccessionNumber = "  A1  "
    path = tmp_path / "mr.dcm"
    ds.save_as(path)
    attributes = read_study_attributes(path)
    assert attributes.patient_name == "Doe^Jane [31m"  # the escape character is a space (one-line text rule)
    assert attributes.study_description == "D" * 64
    assert attributes.accession_number == "A1"


def test_the_issuer_of_patient_id_is_read(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    ds.IssuerOfPatientID = "HOSPITAL-A "
    path = tmp_path / "mr.dcm"
    ds.save_as(path)
    assert read_study_attributes(path).issuer_of_patient_id == "HOSPITAL-A"


def test_a_stable_study_gets_its_worklist_attributes(settings: Settings, tmp_path: Path) -> None:
    past = utcnow() - timedelta(seconds=60)
    ct = ingest(settings, pydicom_test_file("CT_small.dcm"), past)
    before = study(settings, str(ct.StudyInstanceUID))
    assert before.state is StudyState.RECEIVING and before.patient_id is None  # nothing read on the C-STORE path

    result = StudyAssembler(settings).run_once()
    assert result.jobs_created == 1
    after = study(settings, str(ct.StudyInstanceUID))
    assert after.state is StudyState.QUEUED
    assert (after.patient_id, after.patient_name, after.patient_sex) == ("1CT1", "CompressedSamples^CT1", "O")
    assert (after.study_date, after.study_description) == ("20040119", "e+1")
    assert after.patient_birth_date is None and after.accession_number is None

    # A late instance with an accession number and no description: the new value is kept, the old one stays.
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.AccessionNumber = "ACC42"
    del ds.StudyDescription
    late = tmp_path / "late.dcm"
    ds.save_as(late)
    ingest(settings, late, past)
    assert StudyAssembler(settings).run_once().jobs_created == 1
    again = study(settings, str(ct.StudyInstanceUID))
    assert (again.version, again.accession_number, again.study_description) == (2, "ACC42", "e+1")


def test_an_unreadable_instance_leaves_the_columns_empty_and_still_queues(settings: Settings) -> None:
    mr = ingest(settings, pydicom_test_file("MR_small.dcm"), utcnow() - timedelta(seconds=60))
    uid = str(mr.StudyInstanceUID)
    stored = settings.instance_root / uid / str(mr.SeriesInstanceUID) / f"{mr.SOPInstanceUID}.dcm"
    stored.unlink()
    result = StudyAssembler(settings).run_once()
    assert result.jobs_created == 1 and result.sent == 1
    after = study(settings, uid)
    assert after.patient_id is None and after.state is StudyState.QUEUED
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(AnalysisJob.study_id)) == after.id
