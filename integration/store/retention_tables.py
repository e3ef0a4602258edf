"""The purge's own table: which studies a purge has started on, so a crash mid-purge is finished next time.

A purge marks a study (one committed row here) before it deletes a single file, then deletes the files,
then the rows and the mark in one transaction.  A crash between the steps leaves the mark: the next purge
finishes that study first, and ``pacs-vlm store check`` reports its rows whose files are gone as "purge
under way" rather than as damage.

``purge_totals`` keeps what purges removed from the counters ``/metrics`` derives from rows (instances
received, reports signed, review outcomes, the stage histograms ...): the purge adds each study's share in
the transaction that deletes its rows, and ``/metrics`` adds the totals back, so no counter ever goes down.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, UniqueConstraint
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


class PurgeTotal(Base):
    """What purges removed from one sample of a row-derived metric (a counter, or a histogram's bucket)."""

    __tablename__ = "purge_totals"
    __table_args__ = (UniqueConstraint("sample", "labels", name="uq_purge_totals_sample_labels"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The sample's name as exposed (``pacsvlm_instances_received_total``, ``..._bucket``).
    sample: Mapped[str] = mapped_column(String(200))
    #: Its labels as JSON with sorted keys (``{}`` when none; a bucket's ``le`` included).
    labels: Mapped[str] = mapped_column(String(2000))
    value: Mapped[float] = mapped_column(Float, default=0.0)
