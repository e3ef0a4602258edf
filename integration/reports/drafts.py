"""Report documents on disk: the draft's SR (built once) and signing, which adds a verified SR.

Files live under ``settings.data_dir / "reports" / <study UID> / <SR SOP Instance UID>.dcm``; the
database keeps the path relative to ``settings.data_dir`` (``reports/<study>/<sop>.dcm``).  A file is
written to a temporary name in its folder, flushed, renamed into place and the folder flushed
(``settings.fsync``), so a reader never sees half a document.

* :func:`ensure_draft_sr` gives a draft its SR.  The UIDs are drawn once and stored with the draft, so
  building again (a lost file, a redelivered task) gives the same SOP Instance UID; a file already in
  place is kept.
* Beside each SR, :mod:`integration.reports.report_objects` writes the version's TID 1500 (and a draft's key
  images document): :func:`ensure_draft_sr` and :meth:`PreparedSignature.recorded` call it.
* :func:`sign_report` stores the radiologist's version (v2, v3 ...) with a new, verified SR.  Each
  version references the version it replaces (the draft for v2, v2 for v3 ...), so the Predecessor
  Documents Sequence forms a chain back to the draft.  What the radiologist does not edit (findings,
  impression, limitations, comparison) is taken from that version.  Signed versions share one series per report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import ComprehensiveSRStorage, generate_uid
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.findings import (
    MAX_SECTION_CHARS,
    Document,
    edited_findings,
    edited_text,
    images_of,
    kept_boxes,
)
from integration.reports.report_objects import (
    ObjectUnavailable,
    ensure_draft_objects,
    ensure_signed_measurement,
    write_draft_companions,
    write_signed_companions,
)
from integration.reports.sr import Verification, build_draft_sr, build_signed_sr
from integration.reports.sr_files import REPORTS_FOLDER as REPORTS_FOLDER
from integration.reports.sr_files import SourceUnavailable as SourceUnavailable
from integration.reports.sr_files import (
    report_for_sr,
    seen_frames,
    sr_path_of,
    study_headers,
    write_document,
)
from integration.reports.sr_safety import DraftSafety
from integration.store.audit import add_event
from integration.store.revisions import (
    SIGNABLE,
    NotReportOfRecord,
    ReportDocument,
    ReportNotSignable,
    SignedVersion,
    UnknownReport,
    fix_draft_sr_uids,
    load_report,
    next_version,
    record_draft_sr_path,
    record_refusal,
    record_signed_version,
    report_revisions,
)
from integration.store.session import session_scope
from integration.store.tables import Report, utcnow
from integration.store.viewer_tables import ReportObjectKind

log = logging.getLogger(__name__)


def ensure_draft_sr(settings: Settings, report_id: int) -> Path:
    """Give a draft its SR (PARTIAL, UNVERIFIED) once, and return the file; idempotent.

    Parameters
    ----------
    settings : Settings
        Data folder, instance store, database.
    report_id : int
        The draft report.

    Returns
    -------
    pathlib.Path
        ``settings.data_dir / "reports" / <study UID> / <SR SOP Instance UID>.dcm``.

    Raises
    ------
    integration.store.revisions.UnknownReport
        No report has this id.
    SourceUnavailable
        No instance of the study can be read.
    """
    with session_scope(settings.database_url) as session:
        report = load_report(session, report_id)
    if report.sr_path and (settings.data_dir / report.sr_path).is_file():
        write_draft_companions(settings, report_id, settings.data_dir / report.sr_path)
        return settings.data_dir / report.sr_path
    if report.sr_sop_instance_uid is None or report.sr_series_uid is None:
        with session_scope(settings.database_url) as session:
            sop_uid, series_uid = fix_draft_sr_uids(session, report_id, str(generate_uid()), str(generate_uid()))
    else:
        sop_uid, series_uid = report.sr_sop_instance_uid, report.sr_series_uid
    relative = sr_path_of(report.study_uid, sop_uid)
    path = settings.data_dir / relative
    if not path.is_file():
        source, evidence = study_headers(settings, report)
        draft = Document.read(report.findings)
        safety = DraftSafety.of(draft, settings.confidence_low, settings.confidence_high)
        content = replace(report_for_sr(report, draft, evidence, report.created_at), safety=safety)
        document = build_draft_sr(content, source, sop_instance_uid=sop_uid, series_instance_uid=series_uid)
        write_document(path, document, fsync=settings.fsync)
        log.info("report %d: draft SR %s written", report_id, relative)
    if report.sr_path != relative:
        with session_scope(settings.database_url) as session:
            record_draft_sr_path(session, report_id, relative)
    write_draft_companions(settings, report_id, path)  # its TID 1500 and key images
    return path


def signed_text(content: Document, report: ReportDocument, verification: Verification, version: int) -> str:
    """Render a signed version as plain text: the content, then who signed it and that it was AI-assisted.

    Parameters
    ----------
    content : Document
        What is signed.
    report : ReportDocument
        The report (the model that drafted it).
    verification : Verification
        Who signed, when.
    version : int
        The version number.

    Returns
    -------
    str
        The text.
    """
    lines = content.as_text().split("\n")  # COMPARISON: (when there is one), FINDINGS:, IMPRESSION:, LIMITATIONS:
    when = verification.verified_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines += [
        "",
        f"Signed by {verification.observer_name}, {verification.organization}, {when} (report version {version}).",
    ]
    if report.ai_generated:
        lines.append(
            f"AI-assisted: drafted by {report.model_id} (revision {report.model_revision}, "
            f"prompt {report.prompt_version}), reviewed and verified by the signing radiologist."
        )
    else:
        lines.append("Written by the signing radiologist without AI.")
    return "\n".join(lines)


@dataclass(frozen=True)
class PreparedSignature:
    """A signed version ready to record: its verified SR is on disk, its rows are the caller's transaction.

    Parameters
    ----------
    settings : Settings
        Data folder and database.
    signed : SignedVersion
        The version's rows, naming the SR file.
    """

    settings: Settings
    signed: SignedVersion

    @contextmanager
    def recorded(self) -> Iterator[tuple[Session, Report, int]]:
        """Record the version in one transaction that the caller's block joins; on any failure remove the SR.

        Yields the session, the report row and the new revision's id: what the block adds (the review outcome,
        the audit event) commits with the version, or nothing does.

        Raises
        ------
        integration.store.revisions.VersionTaken
            A concurrent signature took the version; sign again.
        integration.store.revisions.NotReportOfRecord
            Another report of the study was signed meanwhile.
        """
        signed = self.signed
        try:
            with session_scope(self.settings.database_url) as session:
                revision_id = record_signed_version(session, signed)
                report = session.get(Report, signed.report_id)
                if report is None:
                    raise UnknownReport(f"no report {signed.report_id}")
                yield session, report, revision_id
        except BaseException:
            (self.settings.data_dir / signed.sr_path).unlink(missing_ok=True)
            raise
        log.info(
            "report %d: version %d signed by %s, SR %s", signed.report_id, signed.version, signed.author, signed.sr_path
        )
        write_signed_companions(self.settings, revision_id)  # its TID 1500


def prepare_signature(
    settings: Settings,
    report_id: int,
    *,
    author: str,
    organization: str,
    findings: object = None,
    impression: str | None = None,
    limitations: str | None = None,
    signed_at: datetime | None = None,
    comparison: str | None = None,
) -> PreparedSignature:
    """Check a signature and write its verified SR (COMPLETE, VERIFIED); the caller records it.

    Recording is :meth:`PreparedSignature.recorded`, in the caller's transaction.

    Parameters
    ----------
    settings : Settings
        Data folder, instance store, database.
    report_id : int
        The report (a draft, or a report signed before: this adds the next version).
    author : str
        The radiologist as a DICOM person name (``"Doe^Jane"``).
    organization : str
        The radiologist's organization.
    findings : list, optional
        Edited findings (``[{"text": ..., "images": [...]}]`` or :class:`~integration.findings.Finding`),
        read strictly by :func:`~integration.findings.edited_findings`; the previous version's when None.
    impression, limitations : str, optional
        Edited text (see :func:`~integration.findings.edited_text`); the previous version's when None.
    comparison : str, optional
        The edited comparison with the prior studies, likewise; the priors compared with and the prior note
        stay the draft's.
    signed_at : datetime, optional
        When (aware); now when None.

    Returns
    -------
    PreparedSignature
        The version to record, its SR file written.

    Raises
    ------
    ValueError
        An invalid name or organization, or malformed findings or text (:class:`InvalidFindings`).
    integration.store.revisions.UnknownReport
        No report has this id.
    integration.store.revisions.ReportNotSignable
        The report was superseded or rejected; :class:`~integration.store.revisions.NotReportOfRecord` when it
        is a second opinion or another report of the study is signed (a study has one report of record).
    """
    verification = Verification(author, organization, signed_at or utcnow())
    with session_scope(settings.database_url) as session:
        report = load_report(session, report_id)
        row = session.get(Report, report_id)
        refusal = record_refusal(session, row) if row is not None else None
    if report.status not in SIGNABLE:
        raise ReportNotSignable(f"report {report_id} is {report.status} and cannot be signed")
    if refusal is not None:
        raise NotReportOfRecord(refusal)
    images_seen = images_of(seen_frames(report.evidence))
    edited = None if findings is None else edited_findings(findings, images_seen)
    impression, limitations, comparison = (
        None if value is None else edited_text(value, MAX_SECTION_CHARS, name, required=False)
        for name, value in (("impression", impression), ("limitations", limitations), ("comparison", comparison))
    )
    draft_path = ensure_draft_sr(settings, report_id)
    with session_scope(settings.database_url) as session:
        previous = [r for r in report_revisions(session, report_id) if r.status == "signed" and r.sr_sop_instance_uid]
        version = next_version(session, report_id)
    before = Document.read(previous[-1].findings if previous else report.findings)
    content = replace(  # the priors compared with and the prior note stay the draft's; the model's safety data do not
        before,
        findings=tuple(f.bare for f in (before.findings if edited is None else kept_boxes(edited, before.findings))),
        impression=before.impression if impression is None else impression,
        limitations=before.limitations if limitations is None else limitations,
        comparison=before.comparison if comparison is None else comparison,
        structured=True,
        problems=(),
        checks=(),
        critical=(),
        decoding="",
        confidence_method="",
    )
    predecessor = Dataset()
    predecessor.SOPClassUID = ComprehensiveSRStorage
    predecessor.StudyInstanceUID = report.study_uid
    if previous:
        predecessor.SeriesInstanceUID = previous[-1].sr_series_uid
        predecessor.SOPInstanceUID = previous[-1].sr_sop_instance_uid
    else:
        header = dcmread(draft_path, stop_before_pixels=True)
        predecessor.SeriesInstanceUID, predecessor.SOPInstanceUID = header.SeriesInstanceUID, header.SOPInstanceUID
    series_uid = (previous[-1].sr_series_uid if previous else None) or str(generate_uid())
    sop_uid = str(generate_uid())
    source, evidence = study_headers(settings, report)
    document = build_signed_sr(
        report_for_sr(report, content, evidence, verification.verified_at),
        source,
        verification=verification,
        predecessor=predecessor,
        sop_instance_uid=sop_uid,
        series_instance_uid=series_uid,
        instance_number=version,
    )
    relative = sr_path_of(report.study_uid, sop_uid)
    write_document(settings.data_dir / relative, document, fsync=settings.fsync)
    signed = SignedVersion(
        report_id=report_id,
        version=version,
        findings=content.as_json(),
        text=signed_text(content, report, verification, version),
        author=author,
        organization=organization,
        signed_at=verification.verified_at,
        sr_sop_instance_uid=sop_uid,
        sr_series_uid=series_uid,
        sr_path=relative,
    )
    return PreparedSignature(settings, signed)


def sign_report(
    settings: Settings,
    report_id: int,
    *,
    author: str,
    organization: str,
    findings: object = None,
    impression: str | None = None,
    limitations: str | None = None,
    signed_at: datetime | None = None,
    comparison: str | None = None,
) -> int:
    """Sign a report in one step: :func:`prepare_signature`, then record it with a ``report.sign`` audit event.

    The parameters and errors are :func:`prepare_signature`'s, and
    :class:`~integration.store.revisions.VersionTaken` when a concurrent signature took the version.
    Returns the new revision's id.
    """
    prepared = prepare_signature(
        settings,
        report_id,
        author=author,
        organization=organization,
        findings=findings,
        impression=impression,
        limitations=limitations,
        signed_at=signed_at,
        comparison=comparison,
    )
    with prepared.recorded() as (session, _, revision_id):
        detail = {"version": prepared.signed.version, "revision_id": revision_id}
        add_event(
            session, actor=author, action="report.sign", object_type="report", object_id=str(report_id), detail=detail
        )
    return revision_id


def report_object_file(settings: Settings, report_id: int, revision_id: int | None, kind: ReportObjectKind) -> Path:
    """Return the file of a report version's object, building it if needed (what export sends).

    Parameters
    ----------
    settings : Settings
        Data folder, instance store, database.
    report_id : int
        The report.
    revision_id : int or None
        The signed revision, or None for the draft.
    kind : ReportObjectKind
        Which object.

    Returns
    -------
    pathlib.Path
        The file.

    Raises
    ------
    integration.reports.report_objects.ObjectUnavailable
        The version has no such object and may not get one.
    integration.store.revisions.UnknownReport
        No report has this id.
    SourceUnavailable
        No instance of the study can be read.
    """
    if revision_id is not None:
        if kind is not ReportObjectKind.MEASUREMENT:
            raise ObjectUnavailable("a signed version has no key images document (its draft's lists the images)")
        return ensure_signed_measurement(settings, revision_id)
    files = ensure_draft_objects(settings, report_id, ensure_draft_sr(settings, report_id))
    if kind.value not in files:
        raise ObjectUnavailable(f"report {report_id} is closed and never had a {kind.value} document")
    return files[kind.value]
