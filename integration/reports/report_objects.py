"""The DICOM objects written beside a report version's SR: its TID 1500 and (drafts only) its key images.

Viewers show TID 1500 Measurement Reports and Key Object Selection documents, not our TID 2000 text SR
(:mod:`integration.reports.sr_measurement`, :mod:`integration.reports.kos`), so each report version gets them
beside its SR:

* a draft (subject ``draft:<report id>``): its TID 1500 (PARTIAL, UNVERIFIED) and its key images document,
  written when its SR is ensured (:func:`integration.reports.drafts.ensure_draft_sr` calls
  :func:`write_draft_companions`);
* a signed version (``signed:<revision id>``): its TID 1500 (COMPLETE, VERIFIED), written once the version is
  recorded (:meth:`integration.reports.drafts.PreparedSignature.recorded` calls :func:`write_signed_companions`).
  No key images: the images the model saw do not change when a radiologist signs.

Each object is a :class:`~integration.store.viewer_tables.ReportObject` row: its UIDs are drawn once (the
row is inserted, or the existing one kept, under the unique ``(subject, kind)``), so building again (a lost
file, a re-sent delivery, two workers at once) gives the same instance; the file is written like the SR
(``reports/<study>/<sop>.dcm`` under the data folder, durably) and its path recorded.  A draft that is no
longer live (withdrawn, rejected, superseded) gets no new object; one it has already is rebuilt if its file
is lost (the IOCM rejection note that takes it back needs its header).  The hooks never raise: a companion that
cannot be written now leaves the SR as it is and is built again on demand (export, the next ensure).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import EnhancedSRStorage, KeyObjectSelectionDocumentStorage, generate_uid
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.findings import Document
from integration.reports.kos import build_key_images
from integration.reports.sr import Verification
from integration.reports.sr_files import report_for_sr, sr_path_of, study_headers, write_document
from integration.reports.sr_measurement import build_measurement_report
from integration.store.deliveries import subject_of
from integration.store.revisions import ReportDocument, load_report
from integration.store.session import session_scope
from integration.store.tables import ReportRevision, ReportStatus, RevisionStatus
from integration.store.viewer_tables import ReportObject, ReportObjectKind

log = logging.getLogger(__name__)

#: Draft states whose draft may still get new objects (a signed report's draft stays visible).
LIVE = frozenset({ReportStatus.DRAFT, ReportStatus.SIGNED})
_SOP_CLASS = {
    ReportObjectKind.MEASUREMENT: EnhancedSRStorage,
    ReportObjectKind.KEY_IMAGES: KeyObjectSelectionDocumentStorage,
}


class ObjectUnavailable(RuntimeError):
    """A report version has no such object and may not get one (a closed draft, a rejected version, ...)."""


def _rows(session: Session, subject: str) -> dict[ReportObjectKind, ReportObject]:
    rows = session.scalars(select(ReportObject).where(ReportObject.subject == subject))
    return {row.kind: row for row in rows}


def _allocate(
    session: Session, report: ReportDocument, revision_id: int | None, kind: ReportObjectKind, series_uid: str
) -> ReportObject:
    """Insert the object's row with fresh UIDs unless it exists; return the row (the existing one if it did)."""
    subject = subject_of(report.report_id, revision_id)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(ReportObject)
        .values(
            report_id=report.report_id,
            revision_id=revision_id,
            subject=subject,
            kind=kind.value,
            study_uid=report.study_uid,
            series_uid=series_uid,
            sop_instance_uid=str(generate_uid()),
            sop_class_uid=str(_SOP_CLASS[kind]),
        )
        .on_conflict_do_nothing(index_elements=["subject", "kind"])
    )
    return _rows(session, subject)[kind]


def _file(settings: Settings, row: ReportObject) -> Path | None:
    """The row's file when it is written and present, else None."""
    if row.path is None:
        return None
    path = settings.data_dir / row.path
    return path if path.is_file() else None


def _write(settings: Settings, row: ReportObject, document: Dataset) -> Path:
    relative = sr_path_of(row.study_uid, row.sop_instance_uid)
    write_document(settings.data_dir / relative, document, fsync=settings.fsync)
    with session_scope(settings.database_url) as session:
        stored = session.get(ReportObject, row.id)
        if stored is not None:
            stored.path = relative
    log.info("report %d: %s %s written", row.report_id, row.kind.value, relative)
    return settings.data_dir / relative


def ensure_draft_objects(settings: Settings, report_id: int, sr_path: Path) -> dict[str, Path]:
    """Give a draft its TID 1500 and key images documents once; return their files by kind; idempotent.

    Parameters
    ----------
    settings : Settings
        Data folder, instance store, database.
    report_id : int
        The draft report.
    sr_path : pathlib.Path
        The draft's SR file (:func:`integration.reports.drafts.ensure_draft_sr` writes it, then calls this).

    Returns
    -------
    dict of str to pathlib.Path
        ``{"tid1500": ..., "kos": ...}``; for a draft that is no longer live, only the objects it had.

    Raises
    ------
    integration.store.revisions.UnknownReport
        No report has this id.
    integration.reports.sr_files.SourceUnavailable
        No instance of the study can be read.
    """
    subject = subject_of(report_id, None)
    with session_scope(settings.database_url) as session:
        report = load_report(session, report_id)
        rows = _rows(session, subject)
        session.expunge_all()
    files = {kind.value: path for kind, row in rows.items() if (path := _file(settings, row)) is not None}
    wanted = list(ReportObjectKind) if report.status in LIVE else list(rows)
    if not report.ai_generated:  # written by hand: no model saw any image, so there are no key images
        wanted = [kind for kind in wanted if kind is not ReportObjectKind.KEY_IMAGES]
    if all(kind.value in files for kind in wanted):
        return files
    sr = dcmread(sr_path, stop_before_pixels=True)
    source, evidence = study_headers(settings, report)
    content = report_for_sr(report, Document.read(report.findings), evidence, report.created_at)
    for kind in (k for k in wanted if k.value not in files):
        row = rows.get(kind)
        if row is None:
            with session_scope(settings.database_url) as session:
                row = _allocate(session, report, None, kind, str(generate_uid()))
                session.expunge(row)
        uids = (row.sop_instance_uid, row.series_uid)
        if kind is ReportObjectKind.MEASUREMENT:
            document = build_measurement_report(content, source, sop_instance_uid=uids[0], series_instance_uid=uids[1])
        else:
            assert content.algorithm is not None  # key images are wanted of AI drafts only
            document = build_key_images(
                source, evidence, sr, content.algorithm, sop_instance_uid=uids[0], series_instance_uid=uids[1]
            )
        files[kind.value] = _write(settings, row, document)
    return files


def ensure_signed_measurement(settings: Settings, revision_id: int) -> Path:
    """Give a signed version its TID 1500 once (COMPLETE, VERIFIED) and return the file; idempotent.

    Its predecessor is the previous version's TID 1500 (the draft's for the first signed version) when that one
    exists; signed versions of a report share one series, as their TID 2000 SRs do.

    Parameters
    ----------
    settings : Settings
        Data folder, instance store, database.
    revision_id : int
        The signed revision.

    Returns
    -------
    pathlib.Path
        The file under ``settings.data_dir``.

    Raises
    ------
    ObjectUnavailable
        The revision is unknown or not a signed version.
    integration.reports.sr_files.SourceUnavailable
        No instance of the study can be read.
    """
    with session_scope(settings.database_url) as session:
        revision = session.get(ReportRevision, revision_id)
        if revision is None or revision.status != RevisionStatus.SIGNED:
            raise ObjectUnavailable(f"revision {revision_id} is not a signed version")
        subject = subject_of(revision.report_id, revision_id)
        existing = _rows(session, subject).get(ReportObjectKind.MEASUREMENT)
        if existing is not None and (path := _file(settings, existing)) is not None:
            return path
        report = load_report(session, revision.report_id)
        earlier = session.scalars(
            select(ReportObject)
            .join(ReportRevision, ReportObject.revision_id == ReportRevision.id)
            .where(
                ReportObject.report_id == revision.report_id,
                ReportObject.kind == ReportObjectKind.MEASUREMENT,
                ReportRevision.version < revision.version,
            )
            .order_by(ReportRevision.version.desc())
        ).first()
        previous = earlier or _rows(session, subject_of(revision.report_id, None)).get(ReportObjectKind.MEASUREMENT)
        predecessor = _reference(previous) if previous is not None and previous.path else None
        row = existing or _allocate(
            session,
            report,
            revision_id,
            ReportObjectKind.MEASUREMENT,
            earlier.series_uid if earlier else str(generate_uid()),
        )
        session.expunge(row)
        verification = Verification(revision.author, revision.organization, revision.created_at)
        content, version = Document.read(revision.findings), revision.version
    source, evidence = study_headers(settings, report)
    document = build_measurement_report(
        report_for_sr(report, content, evidence, verification.verified_at),
        source,
        sop_instance_uid=row.sop_instance_uid,
        series_instance_uid=row.series_uid,
        verification=verification,
        predecessor=predecessor,
        instance_number=version,
    )
    return _write(settings, row, document)


def _reference(row: ReportObject) -> Dataset:
    reference = Dataset()
    reference.StudyInstanceUID = row.study_uid
    reference.SeriesInstanceUID = row.series_uid
    reference.SOPClassUID = row.sop_class_uid
    reference.SOPInstanceUID = row.sop_instance_uid
    return reference


def write_draft_companions(settings: Settings, report_id: int, sr_path: Path) -> None:
    """Ensure a draft's TID 1500 and key images after its SR (:func:`ensure_draft_objects`); never raises.

    A failure is logged and leaves the SR as it is: the objects are built again on demand.
    """
    try:
        ensure_draft_objects(settings, report_id, sr_path)
    except Exception:
        log.exception("report %d: its TID 1500 or key images could not be written now", report_id)


def write_signed_companions(settings: Settings, revision_id: int) -> None:
    """Ensure a signed version's TID 1500 once it is recorded (:func:`ensure_signed_measurement`); never raises.

    A failure is logged and leaves the signature as it is: export builds the document on demand.
    """
    try:
        ensure_signed_measurement(settings, revision_id)
    except Exception:
        log.exception("signed revision %d: its TID 1500 could not be written now", revision_id)
