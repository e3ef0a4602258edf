"""Worklist attributes of a study (patient, issuer, accession, date, description), read from one stored instance.

The listener answers C-STORE without looking past the identifying UIDs; when a study becomes stable the
assembly loop reads the header of one of its stored instances (pixel data is never read) and copies these
attributes onto the study row, so the worklist can show and filter them.  They are patient data: they go to
the database only, never into a log message or an audit record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.findings import clean_text
from integration.store.orders import link_order
from integration.store.tables import AnalysisJob, Instance, Series, Study

log = logging.getLogger(__name__)

#: Study column and the DICOM keyword it is read from, with the column's length.
STUDY_COLUMNS: Mapping[str, tuple[str, int]] = {
    "patient_id": ("PatientID", 64),
    "issuer_of_patient_id": ("IssuerOfPatientID", 64),
    "patient_name": ("PatientName", 192),
    "patient_birth_date": ("PatientBirthDate", 8),
    "patient_sex": ("PatientSex", 16),
    "accession_number": ("AccessionNumber", 16),
    "study_date": ("StudyDate", 8),
    "study_description": ("StudyDescription", 64),
}


@dataclass(frozen=True)
class StudyAttributes:
    """The worklist attributes of a study; None where the header has no value.

    Attributes
    ----------
    patient_id, patient_name, patient_birth_date, patient_sex : str or None
        Patient module (the name as the DICOM person name, ``Family^Given``).
    issuer_of_patient_id : str or None
        Issuer of Patient ID: the same Patient ID of another issuer is another patient.
    accession_number, study_date, study_description : str or None
        General study module (the date as ``YYYYMMDD``).
    """

    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    issuer_of_patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None


def read_study_attributes(path: Path) -> StudyAttributes:
    """Read the worklist attributes from one DICOM file's header.

    Only the named tags are decoded and reading stops before the pixel data.  Values are stripped of
    padding and control characters and cut to the column lengths.

    Parameters
    ----------
    path : pathlib.Path
        A stored instance.

    Returns
    -------
    StudyAttributes
        The attributes found.

    Raises
    ------
    OSError
        If the file cannot be read.
    pydicom.errors.InvalidDicomError
        If it is not DICOM.
    """
    keywords = [keyword for keyword, _ in STUDY_COLUMNS.values()]
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keywords, force=True)
    return StudyAttributes(
        **{column: _text(ds, keyword, length) for column, (keyword, length) in STUDY_COLUMNS.items()}
    )


def _text(ds: Dataset, keyword: str, length: int) -> str | None:
    """Return an attribute as clean text, or None when absent, empty or undecodable."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value of one attribute must not lose the others
        return None
    if value is None:
        return None
    return clean_text(value, one_line=True)[:length].strip() or None


def record_study_attributes(
    session: Session, instance_root: Path, job_ids: Iterable[int], *, study_ids: Iterable[int] = ()
) -> int:
    """Fill the worklist attributes of the studies of new analysis jobs, and commit.

    For each study the header of its newest stored instance is read.  A value found replaces the stored
    one (a later study version may correct it); an attribute the header lacks keeps what was stored.  The
    study is then matched to its RIS order again (:func:`integration.store.orders.link_order`).
    A file that cannot be read is logged (study id only) and skipped.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    instance_root : pathlib.Path
        Root of the instance store.
    job_ids : iterable of int
        Jobs just created by :func:`integration.store.jobs.complete_stable_studies`.
    study_ids : iterable of int
        Studies it completed without a job (skipped by their routing rule).

    Returns
    -------
    int
        Studies updated.
    """
    ids = list(job_ids)
    extra = set(study_ids)
    if not ids and not extra:
        return 0
    found = set(session.scalars(select(AnalysisJob.study_id).where(AnalysisJob.id.in_(ids)))) if ids else set()
    study_ids = sorted(found | extra)
    updated = 0
    for study_id in study_ids:
        storage_path = session.scalar(
            select(Instance.storage_path)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == study_id)
            .order_by(Instance.id.desc())
            .limit(1)
        )
        study = session.get(Study, study_id)
        if storage_path is None or study is None:
            continue
        try:
            attributes = read_study_attributes(instance_root / storage_path)
        except Exception as exc:  # a damaged file leaves the worklist columns as they were
            log.warning("study %d: worklist attributes not read: %s", study_id, type(exc).__name__)
            continue
        for column in STUDY_COLUMNS:
            value = getattr(attributes, column)
            if value is not None:
                setattr(study, column, value)
        link_order(session, study)  # the decoded values may match an order the raw header values did not
        updated += 1
    session.commit()
    return updated
