"""What a study holds for a viewer: its stored instances and the DICOM objects we wrote about it.

DICOMweb query and retrieval (:mod:`integration.web.dicomweb`) serve one list per study: the instances
received (files under the instance store, ``instances.storage_path``) followed by our own objects (files
under the data folder): the TID 2000 SR of a live draft (``reports.sr_path``; drafts that were superseded,
rejected or withdrawn are not shown), the SR of each signed version (``report_revisions.sr_path``) and the
TID 1500 and KOS objects beside them (:class:`~integration.store.viewer_tables.ReportObject`).  Only objects
whose file has been written are listed.  The caller decides first whether the user may see the study.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integration.store.shadow import reviewable
from integration.store.tables import (
    Instance,
    Report,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    Series,
    Study,
)
from integration.store.viewer_tables import (
    KEY_IMAGES_SERIES_NUMBER,
    MEASUREMENT_DRAFT_SERIES_NUMBER,
    MEASUREMENT_SIGNED_SERIES_NUMBER,
    ReportObject,
    ReportObjectKind,
)

#: SOP classes of the TID 2000 SR we write (Comprehensive SR).
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: Series numbers of our TID 2000 SRs (as :mod:`integration.reports.sr` writes them).
DRAFT_SR_SERIES_NUMBER = 9901
SIGNED_SR_SERIES_NUMBER = 9902
#: The transfer syntax of every object we write (Explicit VR Little Endian).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Draft statuses whose SR a viewer is shown.
_SHOWN_DRAFTS = (ReportStatus.DRAFT, ReportStatus.SIGNED)


class ObjectRoot(enum.StrEnum):
    """The folder an object's ``path`` is relative to."""

    #: ``Settings.instance_root``: instances received.
    INSTANCES = "instances"
    #: ``Settings.data_dir``: SR, TID 1500 and KOS objects we wrote.
    DATA = "data"


@dataclass(frozen=True)
class StoredObject:
    """One DICOM object of a study, as DICOMweb lists and serves it.

    Attributes
    ----------
    study_uid, series_uid, sop_instance_uid, sop_class_uid : str
        Its UIDs.
    modality : str or None
        The series' modality (``SR`` or ``KO`` for ours).
    series_number, instance_number : int or None
        As stored (ours: their fixed series numbers, instance number 1 or the report version).
    transfer_syntax_uid : str
        The file's transfer syntax.
    root : ObjectRoot
        Which folder ``path`` is relative to.
    path : str
        The file, relative to ``root`` (from the database, never from a request).
    size_bytes : int or None
        Its size when recorded (instances), None for ours.
    ours : bool
        Written by pacs-vlm (an SR, TID 1500 or KOS object), not received.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    series_number: int | None
    instance_number: int | None
    transfer_syntax_uid: str
    root: ObjectRoot
    path: str
    size_bytes: int | None = None
    ours: bool = False


def _received(
    session: Session, study: Study, series_uid: str | None, sop_uid: str | None, *, limit: int | None = None
) -> list[StoredObject]:
    # Columns, not ORM objects: a 300-instance study is listed several times faster.
    query = (
        select(
            Series.series_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Series.modality,
            Series.series_number,
            Instance.instance_number,
            Instance.transfer_syntax_uid,
            Instance.storage_path,
            Instance.size_bytes,
        )
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
        .order_by(Series.series_number, Series.series_uid, Instance.instance_number, Instance.sop_instance_uid)
    )
    if series_uid is not None:
        query = query.where(Series.series_uid == series_uid)
    if sop_uid is not None:
        query = query.where(Instance.sop_instance_uid == sop_uid)
    if limit is not None:
        query = query.limit(limit)
    return [
        StoredObject(
            study_uid=study.study_uid,
            series_uid=row[0],
            sop_instance_uid=row[1],
            sop_class_uid=row[2],
            modality=row[3],
            series_number=row[4],
            instance_number=row[5],
            transfer_syntax_uid=row[6],
            root=ObjectRoot.INSTANCES,
            path=row[7],
            size_bytes=row[8],
        )
        for row in session.execute(query)
    ]


def _ours(session: Session, study: Study) -> list[StoredObject]:
    found: list[StoredObject] = []

    def add(
        series_uid: str | None,
        sop_uid: str | None,
        sop_class: str,
        modality: str,
        number: int,
        instance: int,
        path: str | None,
    ) -> None:
        if series_uid and sop_uid and path:
            found.append(
                StoredObject(
                    study_uid=study.study_uid,
                    series_uid=series_uid,
                    sop_instance_uid=sop_uid,
                    sop_class_uid=sop_class,
                    modality=modality,
                    series_number=number,
                    instance_number=instance,
                    transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
                    root=ObjectRoot.DATA,
                    path=path,
                    ours=True,
                )
            )

    reports = session.scalars(select(Report).where(Report.study_id == study.id, reviewable()).order_by(Report.id)).all()
    shown: set[str] = set()
    for report in reports:
        if report.status in _SHOWN_DRAFTS:
            shown.add(f"draft:{report.id}")
            add(
                report.sr_series_uid,
                report.sr_sop_instance_uid,
                COMPREHENSIVE_SR,
                "SR",
                DRAFT_SR_SERIES_NUMBER,
                1,
                report.sr_path,
            )
    revisions = session.scalars(
        select(ReportRevision)
        .where(ReportRevision.report_id.in_([r.id for r in reports]), ReportRevision.status == RevisionStatus.SIGNED)
        .order_by(ReportRevision.report_id, ReportRevision.version)
    ).all()
    for revision in revisions:
        shown.add(f"signed:{revision.id}")
        add(
            revision.sr_series_uid,
            revision.sr_sop_instance_uid,
            COMPREHENSIVE_SR,
            "SR",
            SIGNED_SR_SERIES_NUMBER,
            revision.version,
            revision.sr_path,
        )
    versions = {f"signed:{revision.id}": revision.version for revision in revisions}
    objects = session.scalars(
        select(ReportObject).where(ReportObject.study_uid == study.study_uid).order_by(ReportObject.id)
    ).all()
    for item in objects:
        if item.subject not in shown:
            continue
        signed = item.subject.startswith("signed:")
        if item.kind is ReportObjectKind.KEY_IMAGES:
            modality, number = "KO", KEY_IMAGES_SERIES_NUMBER
        else:
            modality = "SR"
            number = MEASUREMENT_SIGNED_SERIES_NUMBER if signed else MEASUREMENT_DRAFT_SERIES_NUMBER
        add(
            item.series_uid,
            item.sop_instance_uid,
            item.sop_class_uid,
            modality,
            number,
            versions.get(item.subject, 1),
            item.path,
        )
    return found


def objects_of(
    session: Session, study: Study, *, series_uid: str | None = None, sop_instance_uid: str | None = None
) -> list[StoredObject]:
    """List a study's objects: received instances by series and instance number, then ours.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        An open session.
    study : Study
        The study (the caller has checked that the user may see it).
    series_uid, sop_instance_uid : str, optional
        Only this series, only this instance.

    Returns
    -------
    list of StoredObject
        Empty when nothing matches.
    """
    found = _received(session, study, series_uid, sop_instance_uid)
    ours = [
        item
        for item in _ours(session, study)
        if (series_uid is None or item.series_uid == series_uid)
        and (sop_instance_uid is None or item.sop_instance_uid == sop_instance_uid)
    ]
    return found + ours


@dataclass(frozen=True)
class StudySummary:
    """What a study-level query answers about a study's objects, without listing them.

    Attributes
    ----------
    series, instances : int
        How many series and objects (received and ours).
    modalities : tuple of str
        The modalities of its series, sorted.
    first : StoredObject or None
        The first received instance (else our first object): the header the study's attributes come from.
    """

    series: int
    instances: int
    modalities: tuple[str, ...]
    first: StoredObject | None


def summary_of(objects: list[StoredObject]) -> StudySummary:
    """Summarize objects already listed (:func:`objects_of`)."""
    received = [item for item in objects if not item.ours] or objects
    return StudySummary(
        series=len({item.series_uid for item in objects}),
        instances=len(objects),
        modalities=tuple(sorted({item.modality for item in objects if item.modality})),
        first=received[0] if received else None,
    )


def study_summary(session: Session, study: Study) -> StudySummary:
    """Summarize a study's objects: counts in SQL, one received instance, our few objects.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        An open session.
    study : Study
        The study (the caller has checked that the user may see it).

    Returns
    -------
    StudySummary
        Counts, modalities and the first object.
    """
    counts = session.execute(
        select(Series.series_uid, Series.modality, func.count(Instance.id))
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
        .group_by(Series.series_uid, Series.modality)
    ).all()
    first = _received(session, study, None, None, limit=1)
    ours = _ours(session, study)
    return StudySummary(
        series=len({row[0] for row in counts} | {item.series_uid for item in ours}),
        instances=sum(int(row[2]) for row in counts) + len(ours),
        modalities=tuple(sorted({str(row[1]) for row in counts if row[1]} | {i.modality for i in ours if i.modality})),
        first=first[0] if first else (ours[0] if ours else None),
    )
