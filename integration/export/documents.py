"""The documents a delivery sends, built from the database: the stored DICOM files, FHIR JSON, HL7 ER7.

DICOM files (the SR, the TID 1500 beside it, a draft's key images: :mod:`integration.reports.report_objects`)
are written once per report version (fixed SOP Instance UIDs), so every re-send sends the same instance; FHIR
and HL7 are built deterministically from the stored report version.

By subject: ``draft:<report id>`` is the draft (SR, FHIR ``preliminary``, HL7 ``P``);
``signed:<revision id>`` a signed version (SR, FHIR ``final``, HL7 ``F``; ``amended`` / ``C`` when an
earlier signed version of the report exists); ``withdrawn:<report id>`` takes a draft back (the IOCM
rejection note referencing the draft's SR, TID 1500 or key images, FHIR ``entered-in-error``, HL7 ``C``
with ``W`` observations), issued at the withdrawal's creation time.  Every FHIR document of a report
carries the report's one resource id (``OutgoingDocument.resource_id``), so its versions replace one another
at the receiver.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from integration.config import Settings
from integration.export.outgoing import OutgoingDocument
from integration.findings import Document
from integration.live_config import live_settings
from integration.reports.document import ReportDocument, VersionRole
from integration.store.deliveries import (
    WITHDRAWN,
    DeliveryTarget,
    earlier_signed_revision,
    withdrawal_created_at,
)
from integration.store.session import session_scope
from integration.store.tables import Instance, Report, ReportRevision, Series, Study

FHIR_MEDIA_TYPE = "application/fhir+json"
#: The DICOM documents of a report version: its SR, its TID 1500 and (drafts) its key images.
DICOM_DOCUMENTS = frozenset({"sr", "tid1500", "kos"})
HL7_MEDIA_TYPE = "x-application/hl7-v2+er7"


class DocumentUnavailable(Exception):
    """The document cannot be built (its report, SR file or source study is gone)."""


def load_document(settings: Settings, target: DeliveryTarget) -> OutgoingDocument:
    """Build (or read) the document of a delivery.

    Parameters
    ----------
    settings : Settings
        The settings.
    target : DeliveryTarget
        The delivery being attempted.

    Returns
    -------
    OutgoingDocument
        Ready to send.

    Raises
    ------
    DocumentUnavailable
        Its report version, SR file or source study is gone.
    """
    name = target.subject.replace(":", "-")
    if target.document in DICOM_DOCUMENTS:
        if is_withdrawal(target):
            path = rejection_note_file(settings, target)
        elif target.document == "sr":
            path = sr_file(settings, target)
        else:
            path = report_object_file(settings, target)
        content = path.read_bytes()
        header = dcmread(path, stop_before_pixels=True)
        suffix = "" if target.document == "sr" else f".{target.document}"
        return OutgoingDocument(
            target.document,
            content,
            f"{name}{suffix}.dcm",
            "application/dicom",
            sop_class_uid=str(header.SOPClassUID),
            sop_instance_uid=str(header.SOPInstanceUID),
        )
    document = report_document(settings, target)
    role = version_role(settings, target)
    if target.document == "fhir":
        from integration.reports.fhir import diagnostic_report_json, report_resource_id

        fhir_id = report_resource_id(target.report_id)
        content = diagnostic_report_json(document, fhir_id=fhir_id, role=role).encode()
        return OutgoingDocument("fhir", content, f"{name}.fhir.json", FHIR_MEDIA_TYPE, resource_id=fhir_id)
    from integration.reports.hl7 import oru_r01

    destinations = live_settings(settings).destinations
    destination = next((d for d in destinations if d.name == target.destination), None)
    receiving = destination.receiving_application if destination is not None else "RIS"
    facility = destination.receiving_facility if destination is not None else ""
    message = oru_r01(document, receiving_application=receiving, receiving_facility=facility, role=role)
    return OutgoingDocument("hl7", message.encode(), f"{name}.hl7", HL7_MEDIA_TYPE)


def is_withdrawal(target: DeliveryTarget) -> bool:
    """Tell whether a delivery takes a draft back (subject ``withdrawn:<report id>``)."""
    return target.subject.startswith(WITHDRAWN)


def version_role(settings: Settings, target: DeliveryTarget) -> VersionRole:
    """Return what a delivery's document does: ``withdrawn``, ``amended`` (signed after a signed one), ``original``."""
    if is_withdrawal(target):
        return "withdrawn"
    if target.revision_id is None:
        return "original"
    with session_scope(settings.database_url) as session:
        return "amended" if earlier_signed_revision(session, target.revision_id) else "original"


def rejection_note_file(settings: Settings, target: DeliveryTarget) -> Path:
    """Return the stored IOCM rejection note of the withdrawn draft's document the delivery names (written once).

    A withdrawal is made per document a receiver got (:func:`~integration.store.deliveries.plan_withdrawals`):
    the note of ``sr`` rejects the draft's SR, that of ``tid1500`` its TID 1500, that of ``kos`` its key images.

    Raises
    ------
    DocumentUnavailable
        The report is gone, or its draft has no such document and none can be built.
    """
    from integration.reports.drafts import SourceUnavailable
    from integration.reports.rejection_note import ensure_rejection_note
    from integration.reports.report_objects import ObjectUnavailable
    from integration.store.revisions import UnknownReport

    try:
        return ensure_rejection_note(settings, target.report_id, target.document)
    except (UnknownReport, SourceUnavailable, ObjectUnavailable) as exc:
        raise DocumentUnavailable(f"rejection note of report {target.report_id}: {exc}") from exc


def report_object_file(settings: Settings, target: DeliveryTarget) -> Path:
    """Return the TID 1500 or key images file of the delivery's report version (built if needed).

    Raises
    ------
    DocumentUnavailable
        The report is gone, its study cannot be read, or the version has no such document (a signed version has
        no key images; a closed draft gets no new document).
    """
    from integration.reports.drafts import SourceUnavailable, report_object_file
    from integration.reports.report_objects import ObjectUnavailable
    from integration.store.revisions import UnknownReport
    from integration.store.viewer_tables import ReportObjectKind

    try:
        return report_object_file(settings, target.report_id, target.revision_id, ReportObjectKind(target.document))
    except (UnknownReport, SourceUnavailable, ObjectUnavailable) as exc:
        raise DocumentUnavailable(f"{target.document} of {target.subject}: {exc}") from exc


def sr_file(settings: Settings, target: DeliveryTarget) -> Path:
    """Return the stored SR file of the delivery's report version (building the draft's SR if needed)."""
    with session_scope(settings.database_url) as session:
        if target.revision_id is None:
            report = session.get(Report, target.report_id)
            stored = report.sr_path if report is not None else None
            if report is None:
                raise DocumentUnavailable(f"report {target.report_id} is gone")
        else:
            revision = session.get(ReportRevision, target.revision_id)
            if revision is None:
                raise DocumentUnavailable(f"report revision {target.revision_id} is gone")
            stored = revision.sr_path
    if stored is None and target.revision_id is None:
        from integration.reports.drafts import ensure_draft_sr

        return ensure_draft_sr(settings, target.report_id)
    if stored is None:
        raise DocumentUnavailable(f"signed revision {target.revision_id} has no SR file")
    path = Path(stored) if Path(stored).is_absolute() else settings.data_dir / stored
    if not path.is_file():
        raise DocumentUnavailable(f"SR file of {target.subject} is missing")
    return path


def report_document(settings: Settings, target: DeliveryTarget) -> ReportDocument:
    """Return the report document (FHIR/HL7 source) of the delivery's report version.

    A withdrawal's document is the draft's, keyed by the withdrawal's subject (its own HL7 control id) and
    issued when the withdrawal was made.
    """
    from integration.reports.document import from_dicom_header

    with session_scope(settings.database_url) as session:
        report = session.get(Report, target.report_id)
        if report is None:
            raise DocumentUnavailable(f"report {target.report_id} is gone")
        revision = session.get(ReportRevision, target.revision_id) if target.revision_id is not None else None
        withdrawn_at = withdrawal_created_at(session, target.delivery_id) if is_withdrawal(target) else None
        study = session.get(Study, report.study_id)
        assert study is not None
        storage_path = session.scalars(
            select(Instance.storage_path)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == study.id)
            .order_by(Instance.id)
            .limit(1)
        ).one_or_none()
        content = Document.read(revision.findings if revision is not None else report.findings)
        text = revision.text if revision is not None else report.text
        issued = revision.created_at if revision is not None else withdrawn_at or report.created_at
        author = revision.author if revision is not None else ""
        organization = revision.organization if revision is not None else ""
        model = (report.model_id, report.model_revision, report.prompt_version)
    if storage_path is None:
        raise DocumentUnavailable(f"the study of report {target.report_id} has no stored instance")
    header = dcmread(settings.instance_root / storage_path, stop_before_pixels=True)
    return from_dicom_header(
        header,
        report_key=target.subject,
        status="draft" if revision is None else "signed",
        findings=content.findings,
        impression=content.impression,
        limitations=content.limitations,
        text=text,
        model_id=model[0],
        model_revision=model[1],
        prompt_version=model[2],
        author=author,
        organization=organization,
        comparison=content.comparison_text,
        priors=content.priors,
        issued=issued,
    )
