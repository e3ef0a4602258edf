"""SQLAlchemy 2.0 tables: studies, series, instances, analysis jobs, audit events, sites, users, sessions, priors.

The database is the source of truth for every state.  Schema changes go
through Alembic revisions in ``integration/store/migrations/``; a test checks for drift.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID_LENGTH = 64
AE_LENGTH = 16


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; naive on SQLite (which has no time zones)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class StudyState(enum.StrEnum):
    """Life cycle of a study (see DESIGN.md, States)."""

    RECEIVING = "receiving"
    STABLE = "stable"
    QUEUED = "queued"
    RUNNING = "running"
    DRAFTED = "drafted"
    SIGNED = "signed"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    #: Its order was cancelled or discontinued: it is not drafted, and a draft it had is withdrawn.
    CANCELLED = "cancelled"
    #: Its MPPS was DISCONTINUED: not completed by the idle timer until a person releases it.
    HELD = "held"
    #: A routing rule with ``skip`` took it: not analysed, on purpose (the rule is named in its ``study.skipped``
    #: audit event; see :func:`integration.store.work.skip_reason`).
    SKIPPED = "skipped"


class JobState(enum.StrEnum):
    """Life cycle of an analysis job (the outbox row of one queue message)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    #: The study's order was cancelled before the job drafted: nothing is drafted.
    CANCELLED = "cancelled"


class ReportStatus(enum.StrEnum):
    """Where a report stands: drafts are reviewed, then signed or rejected."""

    DRAFT = "draft"
    SUPERSEDED = "superseded"
    SIGNED = "signed"
    REJECTED = "rejected"
    #: The draft's order was cancelled after it was drafted: withdrawn from every receiver, never signed.
    WITHDRAWN = "withdrawn"


class ReportPurpose(enum.StrEnum):
    """Why a report was drafted: the study's own reading, or a second opinion that is material for it.

    A study has one report of record, its primary report; a second opinion is compared with it and its
    findings may be copied into it, but it is never signed (a CHECK constraint of ``reports``).
    """

    PRIMARY = "primary"
    SECOND_OPINION = "second_opinion"
    #: A candidate model's draft in shadow mode (a routing rule's ``shadow_model``): never shown to reviewers,
    #: never signed, delivered or alerted on; only compared with the signed report (:mod:`integration.store.shadow`).
    SHADOW = "shadow"


#: ``studies.role`` of a study sent to us to be drafted.
ROLE_CURRENT = "current"
#: ``studies.role`` of a study retrieved as another study's prior: never queued, never on the worklist.
ROLE_PRIOR = "prior"


class PriorSearchState(enum.StrEnum):
    """Where the search for a study's priors stands (one search per study, opened by its first instance)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class PriorState(enum.StrEnum):
    """Where one chosen prior of a study stands."""

    FOUND = "found"
    FETCHING = "fetching"
    READY = "ready"
    UNAVAILABLE = "unavailable"


def _enum(kind: type[enum.StrEnum], name: str) -> Enum:
    return Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints."""

    metadata = MetaData(naming_convention=NAMING)


class Study(Base):
    """One DICOM study, keyed by Study Instance UID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState, "study_state"), default=StudyState.RECEIVING)
    version: Mapped[int] = mapped_column(Integer, default=1)
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    stable_after: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    #: The site the study belongs to (who may review it); assigned from the calling AE or the upload.
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"), index=True)
    #: ``routine`` or ``stat`` (a stat request raises it; the worklist sorts by it).
    priority: Mapped[str] = mapped_column(String(8), default="routine", server_default="routine")
    #: How the study arrived: ``dicom`` (C-STORE), ``stow`` (STOW-RS) or ``upload`` (photo upload).
    source: Mapped[str] = mapped_column(String(8), default="dicom", server_default="dicom")
    #: Digest of the patient identity of the study's first instance (``InstanceHeader.patient_key``): an
    #: instance naming another patient is refused, never merged.
    patient_key: Mapped[str | None] = mapped_column(String(64))
    #: Worklist attributes, read from a stored instance when the study becomes stable (patient data: never logged).
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(192))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    #: Issuer of Patient ID (a worklist attribute): Patient IDs of different issuers are different patients.
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    #: ``current`` (sent to us to be drafted) or ``prior`` (retrieved as another study's prior: never queued,
    #: never on the worklist).  A study that arrived as a current study stays one.
    role: Mapped[str] = mapped_column(String(8), default=ROLE_CURRENT, server_default=ROLE_CURRENT)
    #: The RIS order the study matched (accession number and patient ID with issuer).
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"), index=True)
    #: Why the study is not linked to the order its accession number names (e.g. another patient's): shown on
    #: the worklist, never merged.
    order_problem: Mapped[str | None] = mapped_column(String(128))
    #: Why the study became stat: the critical result categories of its draft (labels only, no patient data).
    critical_reason: Mapped[str | None] = mapped_column(String(128))

    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[AnalysisJob]] = relationship(back_populates="study")

    __table_args__ = (
        Index("ix_studies_state_stable_after", "state", "stable_after"),
        # the patient's other studies (local prior candidates)
        Index("ix_studies_patient_id_site_id", "patient_id", "site_id"),
        # the studies an order's accession number names (order matching)
        Index("ix_studies_accession_number", "accession_number"),
    )


class Series(Base):
    """One series of a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance: where its file is and how it arrived."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    storage_path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    series: Mapped[Series] = relationship(back_populates="instances")


class AnalysisJob(Base):
    """One analysis of one study version: the outbox row behind a queue message."""

    __tablename__ = "analysis_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.QUEUED)
    queue: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    send_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Which configured model runs the job (``PACSVLM_MODELS`` key); None: the worker's default model.
    model_name: Mapped[str | None] = mapped_column(String(64))
    #: Prompt template name to use instead of the one chosen by modality and body part.
    prompt_name: Mapped[str | None] = mapped_column(String(64))
    #: ``routine`` or ``stat`` (stat jobs go to the stat queue, which workers take first).
    priority: Mapped[str] = mapped_column(String(8), default="routine", server_default="routine")
    #: ``primary`` (the study became stable) or ``second_opinion`` (a user asked for one).
    purpose: Mapped[str] = mapped_column(String(16), default="primary", server_default="primary")
    #: Who asked for a second opinion.
    requested_by: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="jobs")

    __table_args__ = (Index("ix_analysis_jobs_state_sent_at", "state", "sent_at"),)


class AuditEvent(Base):
    """Who did what, when, from where (DICOM associations, queueing, later reviews)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    source: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        # sign-in throttling counts failures per username and per host in a window; admins filter by object
        Index("ix_audit_events_action_actor_at", "action", "actor", "at"),
        Index("ix_audit_events_action_source_at", "action", "source", "at"),
        Index("ix_audit_events_object_type_object_id", "object_type", "object_id"),
    )


class Report(Base):
    """A report on one study version: the model's draft (AI-generated, unverified) and, later, signed versions.

    A draft is unique per (study, study version, model, model revision, prompt version): a redelivered
    analysis task finds the draft it already wrote instead of writing a second one.
    """

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("analysis_jobs.id", ondelete="SET NULL"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[ReportStatus] = mapped_column(_enum(ReportStatus, "report_status"), default=ReportStatus.DRAFT)
    ai_generated: Mapped[bool] = mapped_column(Boolean, default=True)
    verification: Mapped[str] = mapped_column(String(16), default="UNVERIFIED")
    model_id: Mapped[str] = mapped_column(String(255))
    model_revision: Mapped[str] = mapped_column(String(128))
    model_family: Mapped[str] = mapped_column(String(32))
    prompt_version: Mapped[str] = mapped_column(String(64))
    structured: Mapped[bool] = mapped_column(Boolean)
    findings: Mapped[dict[str, Any]] = mapped_column(JSON)
    text: Mapped[str] = mapped_column(Text)
    raw_output: Mapped[str] = mapped_column(Text)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    timings: Mapped[dict[str, float]] = mapped_column(JSON)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The draft's DICOM SR (Completion PARTIAL, Verification UNVERIFIED): UIDs fixed once, file in the report store.
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), unique=True)
    sr_series_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    sr_path: Mapped[str | None] = mapped_column(String(255))
    #: Primary (the study's report of record) or a second opinion (never signed); from the job's purpose.
    purpose: Mapped[ReportPurpose] = mapped_column(
        _enum(ReportPurpose, "report_purpose"), default=ReportPurpose.PRIMARY, server_default="primary"
    )
    #: When a radiologist first opened a page showing this report (a stat second opinion keeps its study stat
    #: until then); None while nobody has.
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    revisions: Mapped[list[ReportRevision]] = relationship(back_populates="report", order_by="ReportRevision.version")

    __table_args__ = (
        UniqueConstraint(
            "study_id", "study_version", "model_id", "model_revision", "prompt_version", name="uq_reports_draft_key"
        ),
        # One report of record per study: a second opinion is never signed ...
        CheckConstraint(f"purpose = '{ReportPurpose.PRIMARY.value}' OR status != 'signed'", name="signed_is_primary"),
        # ... and a study has at most one signed report (signing it again adds a version, never a second report).
        Index(
            "uq_reports_study_id_signed",
            "study_id",
            unique=True,
            sqlite_where=sql_text("status = 'signed'"),
            postgresql_where=sql_text("status = 'signed'"),
        ),
    )


class RevisionStatus(enum.StrEnum):
    """What a radiologist's version of a report is."""

    SIGNED = "signed"
    REJECTED = "rejected"


class ReportRevision(Base):
    """A radiologist's version of a draft (v2, v3 ...): the signed report, with its own verified SR."""

    __tablename__ = "report_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[RevisionStatus] = mapped_column(_enum(RevisionStatus, "revision_status"))
    findings: Mapped[dict[str, Any]] = mapped_column(JSON)
    text: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(128))
    organization: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), unique=True)
    sr_series_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    sr_path: Mapped[str | None] = mapped_column(String(255))

    report: Mapped[Report] = relationship(back_populates="revisions")

    __table_args__ = (UniqueConstraint("report_id", "version", name="uq_report_revisions_report_id_version"),)


class ReviewChange(Base):
    """One change a reviewer made to a draft before signing: the append-only, versioned edit history.

    ``seq`` numbers the changes of one report (1, 2, ...); the working copy a reviewer sees is the draft
    with its changes applied in order.  ``finding`` is the 0-based index of the draft's finding, or of an
    added finding counted after the draft's (None for impression, limitations and free text).
    """

    __tablename__ = "review_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: accept, edit, reject, add, impression, limitations, comment, reset
    action: Mapped[str] = mapped_column(String(16))
    finding: Mapped[int | None] = mapped_column(Integer)
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("report_id", "seq", name="uq_review_changes_report_id_seq"),)


class OutcomeNumbers:
    """What became of a draft's findings and text in the signed report (review and shadow outcomes alike)."""

    draft_findings: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[int] = mapped_column(Integer)
    edited: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    added: Mapped[int] = mapped_column(Integer)
    #: Levenshtein distance between the draft's and the signed report's text (characters).
    edit_distance: Mapped[int] = mapped_column(Integer)
    #: 1 - distance / longer length: 1.0 means signed unchanged.
    text_similarity: Mapped[float] = mapped_column(Float)


class ReviewOutcome(OutcomeNumbers, Base):
    """The difference between a draft and what the radiologist signed (or that they rejected it).

    One row per signed or rejected revision, carrying the model, prompt and site so acceptance can be
    measured per model version and site.
    """

    __tablename__ = "review_outcomes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("report_revisions.id", ondelete="CASCADE"), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"), index=True)
    model_id: Mapped[str] = mapped_column(String(255))
    model_revision: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[str] = mapped_column(String(64))
    #: ``signed`` or ``rejected``
    outcome: Mapped[str] = mapped_column(String(16))
    #: Per draft finding what became of it, and the added findings' texts.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeliveryState(enum.StrEnum):
    """Where one delivery of one document to one destination stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"
    #: Not sent, and never will be: its report version was withdrawn before the document left.
    CANCELLED = "cancelled"


class Delivery(Base):
    """One document (SR, FHIR or HL7 of a draft or a signed revision) to one configured destination.

    ``subject`` names the report version (``draft:<report id>`` or ``signed:<revision id>``); a delivery is
    unique per subject, destination and format, so sending a report again re-sends the same document.
    """

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("report_revisions.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(64))
    document: Mapped[str] = mapped_column(String(8))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("subject", "destination", "document", name="uq_deliveries_subject_destination_document"),
        Index("ix_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )


class Site(Base):
    """A hospital site: radiologists and uploaders belong to one, and see only its studies."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(128))


class UserRole(enum.StrEnum):
    """What a user of the review app may do."""

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"
    UPLOADER = "uploader"


class User(Base):
    """A person who signs in to the review app (the password only as an argon2id hash)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[UserRole] = mapped_column(_enum(UserRole, "user_role"))
    #: None only for global administrators; radiologists and uploaders belong to a site.
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The name a signed report carries, as a DICOM person name (``Doe^Jane``); the username when unset.
    person_name: Mapped[str | None] = mapped_column(String(64))

    site: Mapped[Site | None] = relationship()


class UserSession(Base):
    """A signed-in browser: only the SHA-256 of its random token is stored (the token lives in the cookie)."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: ``session`` (a browser's cookie) or ``dicomweb`` (a viewer's bearer token: DICOMweb reads only).
    scope: Mapped[str] = mapped_column(String(16), default="session", server_default="session")

    user: Mapped[User] = relationship()


class SignInThrottle(Base):
    """Recent failed sign-ins of one username from one source (or of any username, ``username=''``).

    Updated by compare-and-swap statements (:mod:`integration.store.sign_in_throttle`) so concurrent
    attempts are counted exactly, on SQLite and PostgreSQL alike.
    """

    __tablename__ = "sign_in_throttle"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(128))
    failures: Mapped[int] = mapped_column(Integer)
    last_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("username", "source"),)


class PriorSearch(Base):
    """The search for one study's priors: opened pending with the study's first instance, claimed by a fetcher.

    A study whose search is pending or running waits for it (up to ``prior_wait_seconds`` past its idle
    timer) before its analysis job is created, so the draft sees the prior.
    """

    __tablename__ = "prior_searches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), unique=True)
    state: Mapped[PriorSearchState] = mapped_column(
        _enum(PriorSearchState, "prior_search_state"), default=PriorSearchState.PENDING
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Why the search failed or found nothing usable (no patient data).
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_prior_searches_state_started_at", "state", "started_at"),)


class StudyPrior(Base):
    """One prior chosen for a study: its metadata, its report, and how its retrieval went.

    ``prior_study_id`` is our copy of it (a study of role ``prior``, or one we hold already); the UID is
    kept when that row is gone.  ``source`` is ``local`` or the configured source's name.
    """

    __tablename__ = "study_priors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    prior_study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    prior_study_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    #: 1 for the most recent chosen prior, then 2 ...
    rank: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(String(64))
    state: Mapped[PriorState] = mapped_column(_enum(PriorState, "prior_state"), default=PriorState.FOUND)
    #: Why it is unavailable (no patient data).
    reason: Mapped[str | None] = mapped_column(Text)
    study_date: Mapped[str | None] = mapped_column(String(8))
    #: The prior's modalities, separated by backslashes as in DICOM.
    modality: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(64))
    accession: Mapped[str | None] = mapped_column(String(16))
    #: The prior's report text (untrusted: cleaned before it reaches a prompt) and where it came from:
    #: ``signed`` (our signed report), ``sr``, ``pdf`` (a PDF exists; no text), ``fhir``.
    report_text: Mapped[str | None] = mapped_column(Text)
    report_source: Mapped[str | None] = mapped_column(String(8))
    #: The series retrieved (or chosen for retrieval).
    series_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("study_id", "prior_study_uid", name="uq_study_priors_study_id_prior_study_uid"),)
