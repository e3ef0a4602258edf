"""The purge's own table: which studies a purge has started on, so a crash mid-purge is finished next time.

A purge marks a study (one committed row here) before it deletes a single file, then deletes the files,
then the rows and the mark in one transaction.  A crash between the steps leaves the mark: the next purge
finishes that study first, and ``pacs-vlm store check`` reports its rows whose files are gone as "purge
under way" rather than as damage.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import UID_LENGTH, Base, UTCDateTime, _enum, utcnow


class PurgeScope(enum.StrEnum):
    """What a purge of one study removes."""

    #: The instance files and their series and instance rows; the study, its reports and SR files stay.
    INSTANCES = "instances"
    #: Everything of the study: instance files, report files, and the study row with all that hangs on it.
    STUDY = "study"


class StudyPurge(Base):
    """A purge under way on one study (deleted with the study's rows, or when the purge is called off)."""

    __tablename__ = "study_purges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), unique=True)
    #: Kept for the audit and the folders when the study row is gone.
    study_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    scope: Mapped[PurgeScope] = mapped_column(_enum(PurgeScope, "purge_scope"))
    #: When the study was marked; an instance received later calls the purge off.
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The study's version when marked.
    study_version: Mapped[int] = mapped_column(Integer)
