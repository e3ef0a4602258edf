"""Tables of what viewers read from us: the DICOM objects we write beside a report's SR.

A report's draft and each signed version have a TID 2000 SR (``reports.sr_*``, ``report_revisions.sr_*``).
Beside it we write a TID 1500 Measurement Report (the form OHIF and other viewers display) and a Key Object
Selection document listing the images the model saw.  Each such file is a :class:`ReportObject`, one per
report version (``subject``, as for deliveries: ``draft:<report id>`` or ``signed:<revision id>``) and kind,
so DICOMweb can list and serve it and export can send it, and a retried build reuses its UIDs.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import UID_LENGTH, Base, UTCDateTime, _enum, utcnow


class ReportObjectKind(enum.StrEnum):
    """Which companion of a report version's SR a :class:`ReportObject` is."""

    #: TID 1500 Measurement Report (Enhanced SR): one qualitative evaluation per finding.
    MEASUREMENT = "tid1500"
    #: Key Object Selection document: the images the model saw.
    KEY_IMAGES = "kos"


class ReportObject(Base):
    """A DICOM object written beside a report version's SR (its file under the data folder)."""

    __tablename__ = "report_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("report_revisions.id", ondelete="CASCADE"))
    #: ``draft:<report id>`` or ``signed:<revision id>``.
    subject: Mapped[str] = mapped_column(String(64))
    kind: Mapped[ReportObjectKind] = mapped_column(_enum(ReportObjectKind, "report_object_kind"))
    study_uid: Mapped[str] = mapped_column(String(UID_LENGTH), index=True)
    series_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    #: Relative to the data folder; None until the file is written.
    path: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("subject", "kind", name="uq_report_objects_subject_kind"),)


#: Series numbers of our own objects (the TID 2000 SRs use 9901 for drafts and 9902 for signed versions, the
#: IOCM rejection note of a withdrawn draft 9903).
MEASUREMENT_DRAFT_SERIES_NUMBER = 9905
KEY_IMAGES_SERIES_NUMBER = 9906
MEASUREMENT_SIGNED_SERIES_NUMBER = 9907
