"""The JSON shapes of the telemedicine case routes (:mod:`integration.web.api.cases`), for validation and OpenAPI."""

from __future__ import annotations

from pydantic import BaseModel


class CasePatient(BaseModel):
    """The patient as the uploader typed them (``name`` readable, ``dicom_name`` as DICOM PN)."""

    name: str | None
    dicom_name: str | None
    id: str | None
    birth_date: str | None
    sex: str | None


class CaseSummaryView(BaseModel):
    """One case in "My uploads": patient, request, number of photos and status (received, drafted, signed)."""

    case_id: int
    patient: CasePatient
    body_part: str
    laterality: str | None
    clinical_question: str
    photos: int
    status: str
    created_at: str
    updated_at: str


class CaseList(BaseModel):
    """A page of the user's cases, newest first; ``next_offset`` asks for the next (older) page, if any."""

    cases: list[CaseSummaryView]
    next_offset: int | None = None


class CasePhoto(BaseModel):
    """A photo of a case."""

    sop_instance_uid: str
    instance_number: int | None


class SignedVersion(BaseModel):
    """A signed version of the case's report (never the unsigned draft)."""

    version: int
    signed_by: str
    signed_at: str
    findings: list[str]
    impression: str
    text: str


class CaseView(CaseSummaryView):
    """A case with its photos and, once signed, the signed versions."""

    images: list[CasePhoto]
    signed: list[SignedVersion]


class PhotosAdded(BaseModel):
    """Photos added to a case."""

    case_id: int
    sop_instance_uids: list[str]
