"""The JSON answers of the web API as pydantic models, so the OpenAPI document describes every answer.

Routes build these from the store's rows and return them (FastAPI validates and serializes them).  Times
are ISO 8601 strings as the store writes them; the model's stored output (a draft's findings and evidence)
is passed on as the JSON it is.  Field order is the order clients have always seen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, computed_field, field_serializer


class SignedIn(BaseModel):
    """The answer of ``POST /api/login``."""

    username: str
    role: str


class StudyOrder(BaseModel):
    """The RIS order a study is linked to: what the reading is for (``status``: scheduled, cancelled, discontinued)."""

    accession_number: str
    indication: str | None
    priority: str
    procedure: str | None
    ordering_provider: str | None
    status: str


class StudyHeader(BaseModel):
    """What identifies a study to a reviewer (patient data: shown to the reviewer, never logged).

    ``order`` is the linked RIS order; ``order_problem`` says why a study with an accession number was not
    linked (e.g. "order is for another patient"): the worklist flags it.  ``critical_reason`` says why the study
    became stat: the critical result categories of its draft (``Critical: Pneumothorax``).
    """

    study_uid: str
    state: str
    priority: str
    source: str
    version: int
    site: str | None
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    order: StudyOrder | None = None
    order_problem: str | None = None
    critical_reason: str | None = None


class WorklistRow(StudyHeader):
    """One study of ``GET /api/studies`` and of the worklist page."""

    modalities: list[str]
    series_count: int
    last_received_at: datetime
    report_id: int | None
    report_status: str | None
    #: Who is reading the study now (a live claim): their sign-in name and person name, and until when.
    claimed_by: str | None = None
    claimed_by_name: str | None = None
    claim_expires_at: datetime | None = None
    #: Why the study is in its state when that is not an error: ``"skipped by rule <name>"``.
    state_reason: str | None = None

    @field_serializer("last_received_at")
    def _iso(self, moment: datetime) -> str:
        return moment.isoformat()

    @field_serializer("claim_expires_at")
    def _iso_or_none(self, moment: datetime | None) -> str | None:
        return moment.isoformat() if moment is not None else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def modality_count(self) -> int:
        """How many modalities the study's series have."""
        return len(self.modalities)


class SeriesSummary(BaseModel):
    """A series of a study, with its number of instances."""

    series_uid: str
    modality: str | None
    body_part: str | None
    series_number: int | None
    instances: int


class StudyReport(BaseModel):
    """A report of ``GET /api/studies/{uid}``: the draft as the model wrote it, or its later status."""

    id: int
    study_version: int
    status: str
    ai_generated: bool
    verification: str
    model_id: str
    prompt_version: str
    findings: dict[str, Any]
    text: str
    evidence: list[Any]
    created_at: str


class StudyDetail(StudyHeader):
    """The answer of ``GET /api/studies/{uid}``."""

    last_received_at: str
    series: list[SeriesSummary]
    reports: list[StudyReport]


class WorkingFinding(BaseModel):
    """A finding of a working copy (``decision``: pending, accepted, edited, rejected or added).

    ``confidence``: the model's confidence in its wording of the draft text (0..1; not the probability that the
    finding is right), None without a score.
    """

    index: int
    text: str
    draft_text: str | None
    images: list[int]
    decision: str
    confidence: float | None = None


class ReviewCheck(BaseModel):
    """A consistency check of a draft, with its state (``open``, ``fixed`` or ``dismissed``).

    ``key`` (``finding:kind``) is what a dismissal names; ``finding`` is 1-based, 0 the draft as a whole.
    """

    key: str
    finding: int
    kind: str
    message: str
    state: str


class WorkingCopy(BaseModel):
    """A draft with the reviewers' changes applied; ``seq`` is the number of the last change."""

    report_id: int
    status: str
    seq: int
    findings: list[WorkingFinding]
    impression: str
    limitations: str
    draft_impression: str
    draft_limitations: str
    comparison: str
    draft_comparison: str
    prior_note: str
    checks: list[ReviewCheck] = []


class Evidence(BaseModel):
    """A prompt image of a draft: which frame, in which window."""

    image: Any
    series_uid: Any
    sop_instance_uid: Any
    frame: Any
    window: Any


class ReportSummary(BaseModel):
    """The draft behind a working copy: model, prompt, study, evidence and problems."""

    id: int
    status: str
    study_uid: str | None
    study_version: int
    ai_generated: bool
    verification: str
    model_id: str
    model_revision: str
    model_family: str
    prompt_version: str
    structured: bool
    purpose: str
    report_of_record: int | None
    created_at: str
    problems: list[str]
    evidence: list[Evidence]


class RevisionSummary(BaseModel):
    """A radiologist's version of a report (signed, or the rejection)."""

    id: int
    version: int
    status: str
    author: str
    organization: str
    created_at: str


class ReportView(BaseModel):
    """The answer of ``GET /api/reports/{id}``: the working copy, its draft, the number of changes, versions."""

    working_copy: WorkingCopy
    report: ReportSummary
    changes: int
    revisions: list[RevisionSummary]


class ReviewChange(BaseModel):
    """One recorded change of ``GET /api/reports/{id}/changes``."""

    seq: int
    actor: str
    at: str
    action: str
    finding: int | None
    before: str | None
    after: str | None


class Signed(BaseModel):
    """The answer of signing: the new version."""

    revision_id: int
    version: int


class Rejected(BaseModel):
    """The answer of rejecting a draft."""

    revision_id: int


class OpinionQueued(BaseModel):
    """The answer of ``POST /api/studies/{uid}/second-opinions`` (``sent``: False when the broker was away)."""

    job_id: int
    queue: str
    priority: str
    sent: bool


class OpinionJob(BaseModel):
    """An analysis of a study: its model, prompt, purpose, priority and state."""

    job_id: int
    study_version: int
    model: str | None
    prompt: str | None
    purpose: str
    priority: str
    state: str
    queue: str
    requested_by: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    report_id: int | None


class OpinionDraft(BaseModel):
    """A draft of a study, as listed with its analyses."""

    report_id: int
    job_id: int | None
    study_version: int
    status: str
    model_id: str
    model_revision: str
    prompt_version: str
    created_at: str


class StudyOpinions(BaseModel):
    """The answer of ``GET /api/studies/{uid}/opinions``, with the models and prompts that may be asked."""

    study_uid: str
    version: int
    priority: str
    jobs: list[OpinionJob]
    drafts: list[OpinionDraft]
    models: list[str]
    prompts: list[str]


class ComparedReport(BaseModel):
    """One side of a comparison."""

    id: int
    study_version: int
    status: str
    model_id: str
    model_revision: str
    prompt_version: str
    job_id: int | None
    created_at: str
    findings: list[str]
    impression: str
    limitations: str


class MatchedFindings(BaseModel):
    """Two findings, one of each draft, that say the same."""

    a: int
    b: int
    similarity: float
    a_text: str | None
    b_text: str | None


class UnmatchedFinding(BaseModel):
    """A finding of one draft only."""

    index: int
    text: str | None


class Agreement(BaseModel):
    """How far two drafts agree."""

    score: float
    impression_similarity: float
    matched: list[MatchedFindings]
    only_a: list[UnmatchedFinding]
    only_b: list[UnmatchedFinding]
    threshold: float
    method: str


class Comparison(BaseModel):
    """The answer of ``GET /api/studies/{uid}/comparison``."""

    study_uid: str
    a: ComparedReport
    b: ComparedReport
    agreement: Agreement


class AuditEvent(BaseModel):
    """One audit event (``detail`` holds ids, counts and reasons, never report text)."""

    id: int
    at: str
    actor: str
    action: str
    object_type: str | None
    object_id: str | None
    source: str | None
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    """The answer of ``GET /api/audit`` (``next_before_id``: null when the page is not full)."""

    events: list[AuditEvent]
    next_before_id: int | None


class HealthCheck(BaseModel, extra="allow"):
    """One check of ``GET /health``, with the check's own numbers as further fields."""

    ok: bool
    detail: str
    seconds: float


class Health(BaseModel):
    """The answer of ``GET /health`` (200 when every check passes, 503 naming the failing ones)."""

    status: str
    failing: list[str]
    checks: dict[str, HealthCheck]


class StoredPhoto(BaseModel):
    """The answer of ``POST /api/uploads/photo``: the case, its study's UIDs and every stored photo's."""

    case_id: int
    study_uid: str
    series_uid: str
    #: The first photo's (one per photo in ``sop_instance_uids``).
    sop_instance_uid: str
    sop_instance_uids: list[str]
