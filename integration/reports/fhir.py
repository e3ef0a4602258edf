"""A report version as a FHIR R4 DiagnosticReport.

FHIR version: fhir.resources 8 ships R5 (default), R4B and STU3 models but no
separate R4 package, so the resources are built and validated with
``fhir.resources.R4B`` (FHIR 4.3.0, the R4 technical correction).
DiagnosticReport, Observation and Device are structurally R4 there: every
element written here exists with the same name, type and cardinality in R4
4.0.1, so R4 servers accept the JSON.

Shape: one DiagnosticReport with the findings as *contained* Observations (one
per finding, referenced from ``result`` as ``#finding-N``), not a Bundle.  The
findings have no life outside their report version, so they travel, are
replaced and are validated as one resource (``PUT DiagnosticReport/{id}``); a
resend is the same resource with the same id.  Drafts also contain the AI
Device that wrote them (referenced from each Observation's ``device``; R4 does
not allow a Device as DiagnosticReport.performer).

- ``id``: one per report across all its versions (:func:`report_resource_id`:
  draft, signed, amended and withdrawn are the same resource, ``PUT`` over one
  another), so a receiver holds one DiagnosticReport per report, never a
  preliminary and a final side by side.
- ``status`` (the Observations likewise): ``preliminary`` for drafts,
  ``final`` for the first signed version, ``amended`` for a signed version
  after an earlier signed one, ``entered-in-error`` for a withdrawn draft.
  ``amended`` rather than ``corrected``: FHIR defines ``corrected`` as the
  special case of ``amended`` where the change fixes an error; a new signed
  version may fix an error or add to the report, and nothing we record says
  which, so we claim only the general status.  ``entered-in-error`` rather
  than ``cancelled``: the draft was issued (a receiver may hold it) and must
  not be used, which is what ``entered-in-error`` says; ``cancelled`` is for
  a report that was never completed.
- ``code``: LOINC 18748-4 "Diagnostic imaging study"; ``category``: v2-0074 RAD.
- ``subject``: a logical reference by the DICOM Patient ID (type MR; the issuer
  as assigner, or as ``urn:oid:`` system when it is an OID).
- ``imagingStudy``: a logical reference by the Study Instance UID
  (system ``urn:dicom:uid``, value ``urn:oid:<uid>``); ``basedOn``: the order by
  accession number (type ACSN).
- ``effectiveDateTime``: the study date/time; ``issued``: when the version was made.
- ``conclusion``: the impression; ``presentedForm``: the report text,
  base64 ``text/plain; charset=utf-8`` (with its ``COMPARISON:`` line).
- the comparison with prior studies (or the line saying there was none, or why
  it could not be fetched): a contained Observation ``#comparison``, first in
  ``result``, coded LOINC 18834-2 "Radiology Comparison study (narrative)" (the
  code DICOM's TID 2000 uses for the same section), ``derivedFrom`` the current
  study and each prior study compared with (ImagingStudy by Study Instance UID).
  R4 has no ``DiagnosticReport.note`` and no comparison element (R6 adds
  ``DiagnosticReport.comparison``; IHE IDR back-ports it as an extension), so an
  Observation is the extension-free R4 way.
- signed: ``performer`` and ``resultsInterpreter`` are the radiologist
  (Practitioner display); drafts: the security label AIAST ("Artificial
  Intelligence asserted"), a narrative and Observation notes saying
  "AI-generated draft, not verified by a radiologist", and the contained Device
  (model id, revision, prompt version).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.attachment import Attachment
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.narrative import Narrative
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.reference import Reference

from integration.findings import clean_text
from integration.reports.document import AI_DRAFT_NOTICE, PersonName, ReportDocument, VersionRole

#: The FHIR release of the models used (R4B, the R4 technical correction).
FHIR_VERSION = "4.3.0"
LOINC = "http://loinc.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DIAGNOSTIC_SERVICE_SECTIONS = "http://terminology.hl7.org/CodeSystem/v2-0074"
IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORIES = "http://terminology.hl7.org/CodeSystem/observation-category"
OBSERVATION_VALUES = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
#: Report and finding codes (LOINC).
REPORT_CODE = ("18748-4", "Diagnostic imaging study")
FINDING_CODE = ("18782-3", "Radiology Study observation (narrative)")
COMPARISON_CODE = ("18834-2", "Radiology Comparison study (narrative)")
#: Id of the contained comparison Observation.
COMPARISON_ID = "comparison"
#: Content type of the presented form.
TEXT_PLAIN = "text/plain; charset=utf-8"
#: Id of the contained AI Device in drafts.
DEVICE_ID = "device"

_STATUS = {
    ("draft", "original"): "preliminary",
    ("signed", "original"): "final",
    ("signed", "amended"): "amended",
    ("draft", "withdrawn"): "entered-in-error",
}
#: What a withdrawn draft's narrative says first.
WITHDRAWN_NOTICE = "Entered in error: this AI-generated draft was withdrawn and must not be used."
_NOT_ID = re.compile(r"[^A-Za-z0-9.-]")
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def diagnostic_report_json(doc: ReportDocument, *, fhir_id: str | None = None, role: VersionRole = "original") -> str:
    """Render a report version as FHIR R4 DiagnosticReport JSON.

    Parameters
    ----------
    doc : ReportDocument
        The report version.
    fhir_id : str, optional
        The resource id (:func:`report_resource_id` of the report); without it the id derives from the
        version's key (:func:`resource_id`).
    role : {"original", "amended", "withdrawn"}
        What this version does to the resource a receiver holds (sets ``status``).

    Returns
    -------
    str
        Compact JSON of one DiagnosticReport with contained Observations; the
        same arguments always give the same string.

    Raises
    ------
    ValueError
        ``amended`` for a draft or ``withdrawn`` for a signed version.
    """
    return diagnostic_report(doc, fhir_id=fhir_id, role=role).model_dump_json()


def diagnostic_report(
    doc: ReportDocument, *, fhir_id: str | None = None, role: VersionRole = "original"
) -> DiagnosticReport:
    """Build (and so validate) the DiagnosticReport of a report version.

    Parameters
    ----------
    doc : ReportDocument
        The report version.
    fhir_id : str, optional
        See :func:`diagnostic_report_json`.
    role : {"original", "amended", "withdrawn"}
        See :func:`diagnostic_report_json`.

    Returns
    -------
    fhir.resources.R4B.diagnosticreport.DiagnosticReport
        The validated resource; see the module docstring for its content.

    Raises
    ------
    ValueError
        ``amended`` for a draft or ``withdrawn`` for a signed version.
    """
    doc.check_role(role)
    status = _STATUS[(doc.status, role)]
    subject = _subject(doc)
    study = _imaging_study(doc.study_uid)
    radiologist = None if doc.is_draft else Reference(type="Practitioner", display=_author_display(doc.author))
    device = _device(doc) if doc.is_draft else None
    observations = [
        _observation(
            doc,
            f"finding-{number}",
            finding.text,
            images=finding.images,
            status=status,
            subject=subject,
            derived_from=[study],
            radiologist=radiologist,
        )
        for number, finding in enumerate(doc.findings, start=1)
    ]
    if comparison := clean_text(doc.comparison):
        studies = [study, *(_imaging_study(prior.study_uid) for prior in doc.priors)]
        observations.insert(
            0,
            _observation(
                doc,
                COMPARISON_ID,
                comparison,
                status=status,
                subject=subject,
                derived_from=studies,
                radiologist=radiologist,
                code=_concept(LOINC, *COMPARISON_CODE, text="Comparison"),
            ),
        )
    organization = (
        Reference(type="Organization", display=clean_text(doc.organization)) if clean_text(doc.organization) else None
    )
    performers = [ref for ref in (radiologist, organization) if ref is not None]
    body = clean_text(doc.body_text)
    return DiagnosticReport(
        id=fhir_id or resource_id(doc.report_key),
        meta=_ai_meta() if doc.is_draft else None,
        text=_narrative(doc, body, withdrawn=role == "withdrawn"),
        contained=[*([device] if device is not None else []), *observations] or None,
        basedOn=[_order(doc.accession_number)] if clean_text(doc.accession_number) else None,
        status=status,
        category=[_concept(DIAGNOSTIC_SERVICE_SECTIONS, "RAD", "Radiology")],
        code=_concept(LOINC, *REPORT_CODE, text=clean_text(doc.study_description) or None),
        subject=subject,
        effectiveDateTime=doc.study_datetime,
        issued=doc.issued,
        performer=performers or None,
        resultsInterpreter=[radiologist] if radiologist is not None else None,
        result=[Reference(reference=f"#{obs.id}", type="Observation") for obs in observations] or None,
        imagingStudy=[study],
        conclusion=clean_text(doc.impression) or None,
        presentedForm=[
            Attachment(
                contentType=TEXT_PLAIN,
                data=base64.b64encode(body.encode("utf-8")).decode("ascii"),
                title="AI draft report (unverified)" if doc.is_draft else "Radiology report",
                creation=doc.issued,
            )
        ],
    )


def report_resource_id(report_id: int) -> str:
    """Return the FHIR resource id of a report: the same for all its versions (``pacsvlm-report-12``).

    Parameters
    ----------
    report_id : int
        The report (``reports.id``).

    Returns
    -------
    str
        ``resource_id(f"report:{report_id}")``.
    """
    return resource_id(f"report:{report_id}")


def resource_id(report_key: str) -> str:
    """Return the FHIR resource id of a report version.

    Parameters
    ----------
    report_key : str
        For example ``"draft:12"``.

    Returns
    -------
    str
        ``pacsvlm-`` and the key with characters outside ``[A-Za-z0-9.-]``
        replaced by ``-`` (``pacsvlm-draft-12``); a hash when that exceeds 64
        characters.
    """
    candidate = "pacsvlm-" + _NOT_ID.sub("-", report_key)
    if len(candidate) <= 64:
        return candidate
    return "pacsvlm-" + hashlib.sha256(report_key.encode("utf-8")).hexdigest()[:40]


def _concept(system: str, code: str, display: str, *, text: str | None = None) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code, display=display)], text=text)


def _ai_meta() -> Meta:
    return Meta(security=[Coding(system=OBSERVATION_VALUES, code="AIAST", display="Artificial Intelligence asserted")])


def _author_display(author: str) -> str:
    name = PersonName.from_dicom(clean_text(author))
    return name.display or clean_text(author)


def _subject(doc: ReportDocument) -> Reference | None:
    patient_id = clean_text(doc.patient_id)
    display = PersonName.from_dicom(clean_text(doc.patient_name)).display or None
    if not patient_id and display is None:
        return None
    identifier = None
    if patient_id:
        issuer = clean_text(doc.patient_id_issuer)
        identifier = Identifier(
            type=_concept(IDENTIFIER_TYPES, "MR", "Medical record number"),
            system=f"urn:oid:{issuer}" if _OID.fullmatch(issuer) else None,
            value=patient_id,
            assigner=Reference(type="Organization", display=issuer) if issuer else None,
        )
    return Reference(type="Patient", identifier=identifier, display=display)


def _imaging_study(study_uid: str) -> Reference:
    return Reference(type="ImagingStudy", identifier=Identifier(system=DICOM_UID_SYSTEM, value=f"urn:oid:{study_uid}"))


def _order(accession_number: str) -> Reference:
    identifier = Identifier(type=_concept(IDENTIFIER_TYPES, "ACSN", "Accession ID"), value=clean_text(accession_number))
    return Reference(type="ServiceRequest", identifier=identifier)


def _device_display(doc: ReportDocument) -> str:
    model = clean_text(doc.model_id) or "unknown model"
    revision = clean_text(doc.model_revision)
    return f"{model} (revision {revision})" if revision else model


def _device(doc: ReportDocument) -> Device:
    versions = [
        DeviceVersion(type=CodeableConcept(text=label), value=clean_text(value))
        for label, value in (("model revision", doc.model_revision), ("prompt version", doc.prompt_version))
        if clean_text(value)
    ]
    return Device(
        id=DEVICE_ID,
        deviceName=[DeviceDeviceName(name=clean_text(doc.model_id) or "unknown model", type="model-name")],
        type=CodeableConcept(text="Medical vision-language model (AI report drafting)"),
        version=versions or None,
        note=[Annotation(text=AI_DRAFT_NOTICE)],
    )


def _observation(
    doc: ReportDocument,
    observation_id: str,
    text: str,
    *,
    status: str,
    subject: Reference | None,
    derived_from: list[Reference],
    radiologist: Reference | None,
    images: tuple[int, ...] = (),
    code: CodeableConcept | None = None,
) -> Observation:
    """A contained Observation: a finding (the default code) or the comparison."""
    notes = []
    if doc.is_draft:
        notes.append(Annotation(text=AI_DRAFT_NOTICE))
    if images:
        notes.append(Annotation(text="Images: " + ", ".join(str(image) for image in images)))
    return Observation(
        id=observation_id,
        status=status,
        category=[_concept(OBSERVATION_CATEGORIES, "imaging", "Imaging")],
        code=code or _concept(LOINC, *FINDING_CODE, text="Finding"),
        subject=subject,
        effectiveDateTime=doc.study_datetime,
        issued=doc.issued,
        performer=[radiologist] if radiologist is not None else None,
        valueString=text,
        note=notes or None,
        derivedFrom=derived_from,
        device=Reference(reference=f"#{DEVICE_ID}", type="Device", display=_device_display(doc))
        if doc.is_draft
        else None,
    )


def _narrative(doc: ReportDocument, body: str, *, withdrawn: bool = False) -> Narrative:
    parts = ['<div xmlns="http://www.w3.org/1999/xhtml">']
    if withdrawn:
        parts.append(f"<p><b>{html.escape(WITHDRAWN_NOTICE)}</b></p>")
    if doc.is_draft:
        parts.append(f"<p><b>{html.escape(AI_DRAFT_NOTICE)}</b></p>")
    parts.append(f"<pre>{html.escape(body)}</pre></div>")
    return Narrative(status="generated", div="".join(parts))
