"""FHIR R4 DiagnosticReport of draft and signed reports, and the ReportDocument header mapping."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pydicom
import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from pydicom.dataset import Dataset

from integration.findings import Finding, PriorReference
from integration.reports.document import (
    AI_DRAFT_NOTICE,
    PersonName,
    ReportDocument,
    dicom_study_fields,
    from_dicom_header,
)
from integration.reports.fhir import diagnostic_report_json, resource_id
from integration.samples import pydicom_test_file

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
HOSTILE = 'Nodule |^~\\& <script>alert("x")</script>\r\nMSH|^~\\&|EVIL'
ISSUED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def make_doc(kind: str = "draft", **changes: object) -> ReportDocument:
    doc = ReportDocument(
        report_key=f"{kind}:12",
        status="draft",
        study_uid=STUDY_UID,
        issued=ISSUED,
        text="FINDINGS:\n- Small nodule right upper lobe [images 1, 2]\n- " + HOSTILE + "\n\nIMPRESSION:\nNodule.",
        findings=(Finding("Small nodule right upper lobe", (1, 2)), Finding(HOSTILE, ())),
        impression="Nodule.",
        limitations="Single series.",
        accession_number="ACC123",
        study_description="CT Chest",
        study_datetime=datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=1))),
        patient_id="PAT-1",
        patient_id_issuer="HOSP",
        patient_name="Doe^John^Q^Mr^Jr",
        patient_birth_date=date(1960, 2, 29),
        patient_sex="M",
        model_id="llava-med-v1.5",
        model_revision="0a1b2c",
        prompt_version="chest-v3",
        organization="General Hospital",
    )
    if kind == "signed":
        doc = dataclasses.replace(doc, status="signed", author="Smith^Jane^^Dr")
    return dataclasses.replace(doc, **changes)  # type: ignore[arg-type]


def parsed(doc: ReportDocument) -> DiagnosticReport:
    return DiagnosticReport.model_validate_json(diagnostic_report_json(doc))


def observations(report: DiagnosticReport) -> list[Observation]:
    return [item for item in report.contained or [] if isinstance(item, Observation)]


def test_draft_is_preliminary_and_marked_as_ai() -> None:
    report = parsed(make_doc("draft"))
    assert report.status == "preliminary"
    assert {obs.status for obs in observations(report)} == {"preliminary"}
    assert report.meta is not None and [label.code for label in report.meta.security] == ["AIAST"]
    assert AI_DRAFT_NOTICE in report.text.div
    assert report.resultsInterpreter is None
    assert [ref.display for ref in report.performer] == ["General Hospital"]
    devices = [item for item in report.contained if isinstance(item, Device)]
    assert len(devices) == 1
    device = devices[0]
    assert device.deviceName[0].name == "llava-med-v1.5"
    assert [(v.type.text, v.value) for v in device.version] == [
        ("model revision", "0a1b2c"),
        ("prompt version", "chest-v3"),
    ]
    for obs in observations(report):
        assert obs.device.reference == f"#{device.id}"
        assert "0a1b2c" in obs.device.display
        assert AI_DRAFT_NOTICE in [note.text for note in obs.note]
    assert report.presentedForm[0].title == "AI draft report (unverified)"


def test_signed_is_final_with_the_radiologist() -> None:
    report = parsed(make_doc("signed"))
    assert report.status == "final"
    assert {obs.status for obs in observations(report)} == {"final"}
    assert report.meta is None
    assert [ref.display for ref in report.resultsInterpreter] == ["Dr Jane Smith"]
    assert [(ref.type, ref.display) for ref in report.performer] == [
        ("Practitioner", "Dr Jane Smith"),
        ("Organization", "General Hospital"),
    ]
    assert not any(isinstance(item, Device) for item in report.contained)
    for obs in observations(report):
        assert obs.device is None
        assert [ref.display for ref in obs.performer] == ["Dr Jane Smith"]
    assert AI_DRAFT_NOTICE not in report.text.div


def test_one_observation_per_finding_referenced_from_result() -> None:
    doc = make_doc("draft")
    report = parsed(doc)
    found = observations(report)
    assert [obs.valueString for obs in found] == [finding.text for finding in doc.findings]
    assert [ref.reference for ref in report.result] == [f"#{obs.id}" for obs in found]
    assert [obs.code.coding[0].code for obs in found] == ["18782-3", "18782-3"]
    assert "Images: 1, 2" in [note.text for note in found[0].note]
    assert all(not note.text.startswith("Images") for note in found[1].note)
    no_findings = parsed(make_doc("draft", findings=()))
    assert no_findings.result is None and observations(no_findings) == []


def test_imaging_study_patient_and_order_references() -> None:
    report = parsed(make_doc("signed"))
    (study,) = report.imagingStudy
    assert study.type == "ImagingStudy"
    assert (study.identifier.system, study.identifier.value) == ("urn:dicom:uid", f"urn:oid:{STUDY_UID}")
    for obs in observations(report):
        assert obs.derivedFrom[0].identifier.value == f"urn:oid:{STUDY_UID}"
        assert obs.subject == report.subject
    subject = report.subject
    assert subject.type == "Patient" and subject.display == "Mr John Q Doe Jr"
    assert subject.identifier.value == "PAT-1"
    assert subject.identifier.type.coding[0].code == "MR"
    assert subject.identifier.system is None and subject.identifier.assigner.display == "HOSP"
    (order,) = report.basedOn
    assert order.type == "ServiceRequest"
    assert (order.identifier.type.coding[0].code, order.identifier.value) == ("ACSN", "ACC123")


def test_an_oid_issuer_becomes_the_identifier_system() -> None:
    report = parsed(make_doc("draft", patient_id_issuer="1.2.3.4"))
    assert report.subject.identifier.system == "urn:oid:1.2.3.4"


def test_values_parse_back_unchanged() -> None:
    doc = make_doc("signed")
    text = diagnostic_report_json(doc)
    assert json.loads(text)["resourceType"] == "DiagnosticReport"
    report = DiagnosticReport.model_validate_json(text)
    assert report.id == resource_id(doc.report_key) == "pacsvlm-signed-12"
    assert [(c.system, c.code, c.display) for c in report.code.coding] == [
        ("http://loinc.org", "18748-4", "Diagnostic imaging study")
    ]
    assert report.code.text == "CT Chest"
    assert report.category[0].coding[0].code == "RAD"
    assert report.conclusion == "Nodule."
    assert report.issued == ISSUED
    assert report.effectiveDateTime == doc.study_datetime
    (form,) = report.presentedForm
    assert form.contentType == "text/plain; charset=utf-8"
    raw = base64.b64decode(json.loads(text)["presentedForm"][0]["data"])
    assert raw.decode("utf-8") == doc.text
    # The model round-trips through the library unchanged.
    assert report.model_dump_json() == text


def test_narrative_escapes_untrusted_text() -> None:
    report = parsed(make_doc("draft"))
    assert "<script>" not in report.text.div
    assert "&lt;script&gt;" in report.text.div


def test_same_document_gives_the_same_json() -> None:
    first = diagnostic_report_json(make_doc("draft"))
    assert diagnostic_report_json(make_doc("draft")) == first
    assert diagnostic_report_json(make_doc("draft", report_key="draft:13")) != first
    assert resource_id("x" * 100) == resource_id("x" * 100)
    assert len(resource_id("x" * 100)) <= 64


def test_study_date_without_time_and_empty_sections() -> None:
    doc = make_doc("draft", study_datetime=date(2026, 3, 1), impression="", accession_number="", text="")
    text = diagnostic_report_json(doc)
    assert json.loads(text)["effectiveDateTime"] == "2026-03-01"
    report = DiagnosticReport.model_validate_json(text)
    assert report.conclusion is None and report.basedOn is None
    body = base64.b64decode(json.loads(text)["presentedForm"][0]["data"]).decode()
    assert body.startswith(AI_DRAFT_NOTICE) and "Small nodule right upper lobe [images 1, 2]" in body


def test_ct_small_header_maps_to_the_patient_and_study() -> None:
    header = pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True)
    fields = dicom_study_fields(header)
    assert fields["patient_id"] == "1CT1"
    assert fields["patient_id_issuer"] == ""
    assert fields["patient_name"] == "CompressedSamples^CT1"
    assert fields["patient_birth_date"] is None
    assert fields["patient_sex"] == "O"
    assert fields["accession_number"] == ""
    assert fields["study_description"] == "e+1"
    assert fields["study_uid"] == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    # CT_small carries Timezone Offset From UTC -0500.
    assert fields["study_datetime"] == datetime(2004, 1, 19, 7, 27, 30, tzinfo=timezone(-timedelta(hours=5)))
    doc = ReportDocument(**fields, report_key="draft:1", status="draft", issued=ISSUED, text="Normal.")
    report = parsed(doc)
    assert report.subject.identifier.value == "1CT1"
    assert report.subject.identifier.assigner is None
    assert report.subject.display == "CT1 CompressedSamples"
    assert report.basedOn is None
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{fields['study_uid']}"


def test_missing_optional_header_fields() -> None:
    header = Dataset()
    header.StudyInstanceUID = STUDY_UID
    header.StudyDate = "20260301"
    fields = dicom_study_fields(header)
    assert fields == {
        "study_uid": STUDY_UID,
        "accession_number": "",
        "study_description": "",
        "study_datetime": date(2026, 3, 1),
        "patient_id": "",
        "patient_id_issuer": "",
        "patient_name": "",
        "patient_birth_date": None,
        "patient_sex": "",
    }
    report = parsed(ReportDocument(**fields, report_key="draft:2", status="draft", issued=ISSUED, text="x"))
    assert report.subject is None
    assert report.code.text is None


def test_header_dates_times_issuer_and_local_timezone() -> None:
    header = Dataset()
    header.StudyInstanceUID = STUDY_UID
    header.StudyDate = "20260115"
    header.StudyTime = "101530.25"
    header.PatientBirthDate = "19700230"  # not a date
    header.IssuerOfPatientID = "HOSP"
    header.PatientSex = "F"
    fields = dicom_study_fields(header, local_timezone=ZoneInfo("Europe/Berlin"))
    assert fields["study_datetime"] == datetime(2026, 1, 15, 10, 15, 30, 250000, tzinfo=ZoneInfo("Europe/Berlin"))
    moment = fields["study_datetime"]
    assert isinstance(moment, datetime) and moment.utcoffset() == timedelta(hours=1)
    assert fields["patient_birth_date"] is None
    assert fields["patient_id_issuer"] == "HOSP"
    assert fields["patient_sex"] == "F"
    with pytest.warns(UserWarning):  # pydicom warns about the invalid TM too
        header.StudyTime = "garbage"
    assert dicom_study_fields(header)["study_datetime"] == date(2026, 1, 15)
    assert dicom_study_fields(_with_uid())["study_datetime"] is None
    with pytest.raises(ValueError, match="Study Instance UID"):
        dicom_study_fields(Dataset())


def _with_uid() -> Dataset:
    header = Dataset()
    header.StudyInstanceUID = STUDY_UID
    return header


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"issued": datetime(2026, 1, 1)}, "issued"),
        ({"study_datetime": datetime(2026, 1, 1)}, "study_datetime"),
        ({"study_uid": "1.2/../3"}, "study_uid"),
        ({"status": "final"}, "status"),
        ({"report_key": " "}, "report_key"),
    ],
)
def test_inconsistent_documents_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_doc("draft", **changes)


def test_signed_report_needs_its_author() -> None:
    with pytest.raises(ValueError, match="author"):
        make_doc("signed", author="")


def test_person_name_components() -> None:
    name = PersonName.from_dicom("Yamada^Tarou^^Dr=山田^太郎")
    assert (name.family, name.given, name.middle, name.prefix, name.suffix) == ("Yamada", "Tarou", "", "Dr", "")
    assert name.display == "Dr Tarou Yamada"
    assert PersonName.from_dicom("jsmith").display == "jsmith"
    assert PersonName.from_dicom("").display == ""


def test_from_dicom_header_builds_the_whole_document() -> None:
    header = pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True)
    doc = from_dicom_header(
        header,
        report_key="signed:5",
        status="signed",
        issued=ISSUED,
        text="Normal.",
        findings=[("No nodule", [3, 4]), Finding("No effusion")],
        impression="Normal.",
        author="Smith^Jane",
        organization="General Hospital",
    )
    assert doc.patient_id == "1CT1" and doc.study_uid == header.StudyInstanceUID
    assert doc.findings == (Finding("No nodule", (3, 4)), Finding("No effusion", ()))
    report = parsed(doc)
    assert report.status == "final" and [obs.valueString for obs in observations(report)] == [
        "No nodule",
        "No effusion",
    ]
    with pytest.raises(ValueError, match="author"):
        from_dicom_header(header, report_key="signed:6", status="signed", issued=ISSUED, text="x")


PRIOR_UID = "1.2.826.0.1.3680043.8.498.7"
COMPARISON = "Compared with the CT of 2025-01-10, the nodule is unchanged."


def test_comparison_is_an_observation_derived_from_the_prior_and_in_the_text() -> None:
    prior = PriorReference.of(PRIOR_UID, "20250110", modality="CT", description="CT Chest")
    for kind in ("draft", "signed"):
        doc = make_doc(kind, text="", comparison=COMPARISON, priors=(prior,))
        report = parsed(doc)
        comparison, *findings = observations(report)
        assert comparison.id == "comparison" and comparison.valueString == COMPARISON
        assert comparison.code.coding[0].code == "18834-2" and comparison.status == report.status
        assert [ref.identifier.value for ref in comparison.derivedFrom] == [
            f"urn:oid:{STUDY_UID}",
            f"urn:oid:{PRIOR_UID}",
        ]
        assert [ref.reference for ref in report.result][:2] == ["#comparison", "#finding-1"]
        assert [f.id for f in findings] == ["finding-1", "finding-2"]
        text = base64.b64decode(json.loads(diagnostic_report_json(doc))["presentedForm"][0]["data"]).decode()
        assert f"COMPARISON: {COMPARISON}" in text and text.index("COMPARISON:") < text.index("FINDINGS:")
        assert [ref.identifier.value for ref in report.imagingStudy] == [f"urn:oid:{STUDY_UID}"]


def test_no_prior_line_travels_and_older_reports_have_no_comparison() -> None:
    report = parsed(make_doc(comparison="No prior study available."))
    [comparison] = [obs for obs in observations(report) if obs.id == "comparison"]
    assert comparison.valueString == "No prior study available."
    assert [ref.identifier.value for ref in comparison.derivedFrom] == [f"urn:oid:{STUDY_UID}"]
    assert all(obs.id != "comparison" for obs in observations(parsed(make_doc())))
