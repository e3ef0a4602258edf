"""Where report documents live and what they are built from: shared by the SR, TID 1500 and KOS builders.

Files live under ``settings.data_dir / "reports" / <study UID> / <SOP Instance UID>.dcm``; the database keeps
the path relative to ``settings.data_dir``.  A file is written to a temporary name in its folder, flushed,
renamed into place and the folder flushed (``settings.fsync``), so a reader never sees half a document.
The patient and study modules come from one stored instance of the study, the evidence from the instances
the model saw.  :mod:`integration.reports.drafts` (the SRs) and :mod:`integration.reports.report_objects`
(TID 1500, KOS) both build on this module, so neither imports the other's internals.
"""

from __future__ import annotations

import logging
from datetime import datetime
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread, dcmwrite
from pydicom.errors import InvalidDicomError

from integration.config import Settings
from integration.durable import replace_file
from integration.findings import Document, Evidence, evidence_of
from integration.reports.sr import Algorithm, ReportForSr
from integration.reports.sr_content import SeenFrame
from integration.store.revisions import ReportDocument, instance_paths
from integration.store.session import session_scope
from integration.uids import is_valid_uid

log = logging.getLogger(__name__)

REPORTS_FOLDER = "reports"


class SourceUnavailable(RuntimeError):
    """No stored instance of the report's study can be read (patient and study data come from one)."""


def sr_path_of(study_uid: str, sop_instance_uid: str) -> str:
    """Return the stored path of an SR (relative to the data folder), from validated UIDs only.

    Parameters
    ----------
    study_uid, sop_instance_uid : str
        The study and the SR's SOP Instance UID.

    Returns
    -------
    str
        ``reports/<study>/<sop>.dcm``.

    Raises
    ------
    ValueError
        A UID that is not a valid DICOM UID (so could not be a safe path).
    """
    if not (is_valid_uid(study_uid) and is_valid_uid(sop_instance_uid)):
        raise ValueError("refusing to build a path from an invalid UID")
    return f"{REPORTS_FOLDER}/{study_uid}/{sop_instance_uid}.dcm"


def write_document(path: Path, document: Dataset, *, fsync: bool = True) -> None:
    """Write a DICOM file durably: temporary file, flush, atomic rename, flushed folders.

    Parameters
    ----------
    path : pathlib.Path
        Final name; replaced atomically if present.
    document : pydicom.Dataset
        The data set, with file meta.
    fsync : bool
        Flush file and folders to stable storage.
    """
    buffer = BytesIO()
    dcmwrite(buffer, document, enforce_file_format=True)
    replace_file(path, buffer.getbuffer(), fsync=fsync)


def _instance_file(settings: Settings, storage_path: str) -> Path:
    root = settings.instance_root.resolve()
    path = (root / storage_path).resolve()
    if not path.is_relative_to(root):
        raise ValueError("stored path escapes the instance store")
    return path


def study_headers(settings: Settings, report: ReportDocument) -> tuple[Dataset, tuple[SeenFrame, ...]]:
    """Read the headers of the instances the model saw: the source data set and each one's frame count.

    Raises
    ------
    SourceUnavailable
        No instance of the study can be read.
    """
    entries = seen_frames(report.evidence)
    wanted = list(dict.fromkeys(e.sop_instance_uid for e in entries))
    with session_scope(settings.database_url) as session:
        paths = instance_paths(session, report.study_id, report.study_version, wanted)
        fallback = instance_paths(session, report.study_id, report.study_version, ())
    headers: dict[str, Dataset] = {}
    for uid, storage_path in [*paths.items(), *fallback.items()]:
        try:
            headers.setdefault(uid, dcmread(_instance_file(settings, storage_path), stop_before_pixels=True))
        except (OSError, InvalidDicomError, ValueError) as exc:
            log.warning("report %d: instance %s unreadable for the SR: %s", report.report_id, uid, exc)
    source = next((headers[uid] for uid in [*wanted, *fallback] if uid in headers), None)
    if source is None:
        raise SourceUnavailable(f"no stored instance of study {report.study_uid} can be read")
    most = {uid: max(e.frame for e in entries if e.sop_instance_uid == uid) for uid in wanted}
    counts = {uid: int(headers[uid].get("NumberOfFrames") or 1) if uid in headers else most[uid] for uid in wanted}
    frames = tuple(
        SeenFrame(
            e.image,
            e.sop_class_uid,
            e.sop_instance_uid,
            e.series_uid,
            e.frame,
            counts[e.sop_instance_uid],
            study_uid=e.study_uid if e.prior else None,  # a prior's instances: Pertinent Other Evidence
            rows=int(headers[e.sop_instance_uid].get("Rows") or 0) if e.sop_instance_uid in headers else 0,
            columns=int(headers[e.sop_instance_uid].get("Columns") or 0) if e.sop_instance_uid in headers else 0,
        )
        for e in entries
    )
    return source, frames


def seen_frames(evidence: object) -> tuple[Evidence, ...]:
    """The valid evidence entries (others are logged and left out)."""
    entries = evidence_of(evidence)
    if len(entries) != (len(evidence) if isinstance(evidence, list) else 0):
        log.warning("evidence entry without valid UIDs, image or frame number left out of the SR")
    return entries


def report_for_sr(
    report: ReportDocument, content: Document, evidence: tuple[SeenFrame, ...], made_at: datetime
) -> ReportForSr:
    """Return what an SR of a report version shows: its content, the evidence and the drafting model (none by hand)."""
    algorithm = Algorithm(report.model_id, report.model_revision, report.model_family, report.prompt_version)
    return ReportForSr(
        findings=content.findings,
        impression=content.impression,
        limitations=content.limitations,
        evidence=evidence,
        algorithm=algorithm if report.ai_generated else None,
        created_at=made_at,
        comparison=content.comparison,
        priors=content.priors,
        prior_note=content.prior_note,
    )
