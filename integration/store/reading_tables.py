"""Tables of the reading day: who is reading a study now, and the telemedicine cases uploaders follow.

A :class:`StudyClaim` says that one radiologist is reading a study: others see who, and their review changes
are refused until the claim is released (signing releases it) or expires (``claim_minutes`` without activity).
An :class:`UploadCase` is one telemedicine request: one study of photos, owned by the uploader who opened it,
with the clinical question kept whole (a DICOM LO element holds 64 characters).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import Base, UTCDateTime, utcnow


class StudyClaim(Base):
    """A radiologist reading a study: at most one per study, renewed by activity, released by signing."""

    __tablename__ = "study_claims"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Renewed by each page view and change of the holder; after it, anyone may claim the study.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UploadCase(Base):
    """A telemedicine case: one study of one or more photos, its requester and their whole clinical question."""

    __tablename__ = "upload_cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), unique=True)
    #: The uploader who opened the case: they (and administrators) see it and its signed report, nobody else
    #: of their role.  None once that account is deleted.
    uploader_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"), index=True)
    #: The question as typed (cleaned), at most ``upload_question_chars``.
    clinical_question: Mapped[str] = mapped_column(Text)
    #: The side stated for the case (``R``, ``L``) or None.
    laterality: Mapped[str | None] = mapped_column(String(1))
    body_part: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: When the newest photo was added.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
