"""HL7 v2.5.1 ORU^R01 of draft and signed reports: structure, status, escaping, determinism."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pydicom
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom.dataset import Dataset

from integration.findings import Finding, PriorReference
from integration.reports.document import AI_DRAFT_NOTICE, ReportDocument, from_dicom_header
from integration.reports.hl7 import control_id, escape_text, oru_r01, report_lines
from integration.samples import pydicom_test_file

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
HOSTILE = "Nodule |^~\\& \\H\\bold\\N\\ and \\X0D\\\r\nMSH|^~\\&|EVIL|\rPID|1||666\nOBX|99|TX|x||owned"
ISSUED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
_SEQUENCES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}


def make_doc(kind: str = "draft", **changes: object) -> ReportDocument:
    doc = ReportDocument(
        report_key=f"{kind}:12",
        status="draft",
        study_uid=STUDY_UID,
        issued=ISSUED,
        text="FINDINGS:\n- Small nodule [images 1, 2]\n- " + HOSTILE + "\n\nIMPRESSION:\nNodule.",
        findings=(Finding("Small nodule", (1, 2)), Finding(HOSTILE, ())),
        impression="Nodule.",
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


def unescape(value: str) -> str:
    return re.sub(r"\\([FSTRE])\\", lambda match: _SEQUENCES[match[1]], value)


def parse(er7: str) -> Any:
    message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    return message


def order_of(message: Any) -> Any:
    return message.oru_r01_patient_result.oru_r01_order_observation


def obx_segments(message: Any) -> list[Any]:
    return [group.obx for group in order_of(message).oru_r01_observation]


def test_draft_is_preliminary_signed_is_final() -> None:
    draft = parse(oru_r01(make_doc("draft")))
    assert order_of(draft).obr.obr_25.to_er7() == "P"
    assert {obx.obx_11.to_er7() for obx in obx_segments(draft)} == {"P"}
    assert order_of(draft).obr.obr_32.to_er7() == ""
    assert AI_DRAFT_NOTICE in order_of(draft).nte.nte_3.to_er7()
    assert "0a1b2c" in order_of(draft).nte.nte_3.to_er7()

    signed = parse(oru_r01(make_doc("signed")))
    assert order_of(signed).obr.obr_25.to_er7() == "F"
    assert {obx.obx_11.to_er7() for obx in obx_segments(signed)} == {"F"}
    # Principal result interpreter: NDL whose name (CNN) is in subcomponents.
    assert order_of(signed).obr.obr_32.to_er7() == "&Smith&Jane&&&Dr"
    assert {obx.obx_16.to_er7() for obx in obx_segments(signed)} == {"^Smith^Jane^^^Dr"}
    assert "NTE" not in [segment.name for segment in order_of(signed).children]


def test_message_header() -> None:
    er7 = oru_r01(make_doc("signed"), receiving_application="RIS^X", receiving_facility="Main")
    msh = parse(er7).msh
    assert msh.msh_3.to_er7() == "PACSVLM"
    assert msh.msh_4.to_er7() == "General Hospital"
    assert unescape(msh.msh_5.to_er7()) == "RIS^X"
    assert msh.msh_6.to_er7() == "Main"
    assert msh.msh_7.to_er7() == "20260304050607+0000"
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msh.msh_10.to_er7() == "PVLM-signed-12"
    assert msh.msh_12.to_er7() == "2.5.1"
    assert msh.msh_18.to_er7() == "UNICODE UTF-8"
    default = parse(oru_r01(make_doc("signed"))).msh
    assert default.msh_5.to_er7() == "RIS" and default.msh_6.to_er7() == ""


def test_patient_order_and_report_text_parse_back() -> None:
    doc = make_doc("signed")
    message = parse(oru_r01(doc))
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == "PAT-1^^^HOSP^MR"
    assert pid.pid_5.to_er7() == "Doe^John^Q^Jr^Mr"  # XPN: family, given, middle, suffix, prefix
    assert pid.pid_7.to_er7() == "19600229"
    assert pid.pid_8.to_er7() == "M"
    order = order_of(message)
    assert order.orc.orc_1.to_er7() == "RE"
    assert order.orc.orc_2.to_er7() == order.orc.orc_3.to_er7() == "ACC123"
    assert order.obr.obr_2.to_er7() == order.obr.obr_3.to_er7() == "ACC123"
    assert order.obr.obr_4.to_er7() == "^CT Chest"
    assert order.obr.obr_7.to_er7() == "20260301093000+0100"
    assert order.obr.obr_22.to_er7() == "20260304050607+0000"
    assert order.obr.obr_24.to_er7() == "RAD"
    first, *lines = obx_segments(message)
    assert (first.obx_2.to_er7(), first.obx_3.to_er7(), first.obx_5.to_er7()) == (
        "ST",
        "110180^Study Instance UID^DCM",
        STUDY_UID,
    )
    assert {obx.obx_2.to_er7() for obx in lines} == {"TX"}
    assert {obx.obx_3.to_er7() for obx in lines} == {"18748-4^Diagnostic imaging study^LN"}
    assert [int(obx.obx_1.to_er7()) for obx in obx_segments(message)] == list(range(1, len(lines) + 2))
    assert [unescape(obx.obx_5.to_er7()) for obx in lines] == report_lines(doc.text)


def test_hostile_text_cannot_inject_segments_or_delimiters() -> None:
    doc = make_doc(
        "draft",
        patient_name="O'Brien|X^Pat~y&z\\w",
        study_description="CT|chest^x&y~z\\",
        accession_number="A|1",
        organization="Org\rMSH|evil",
    )
    er7 = oru_r01(doc)
    assert "\n" not in er7
    segments = er7.split("\r")
    assert [segment[:3] for segment in segments] == ["MSH", "PID", "ORC", "OBR", "NTE"] + ["OBX"] * (len(segments) - 5)
    message = parse(er7)
    lines = obx_segments(message)[1:]
    texts = [unescape(obx.obx_5.to_er7()) for obx in lines]
    assert texts == report_lines(doc.text)
    # The hostile finding's line breaks became separate lines of text, never segments.
    assert "MSH|^~\\&|EVIL|" in texts and "PID|1||666" in texts and "OBX|99|TX|x||owned" in texts
    assert "- Nodule |^~\\& \\H\\bold\\N\\ and \\X0D\\" in texts
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert [unescape(c.to_er7()) for c in pid.pid_5.children] == ["O'Brien|X", "Pat~y&z\\w"]
    obr = order_of(message).obr
    assert obr.obr_4.to_er7() == "^CT\\F\\chest\\S\\x\\T\\y\\R\\z\\E\\"
    assert unescape(obr.obr_3.to_er7()) == "A|1"
    assert unescape(message.msh.msh_4.to_er7()) == "Org MSH|evil"


def test_escape_text() -> None:
    assert escape_text("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    # Input that looks like an escape sequence is escaped, not passed through.
    assert escape_text("\\H\\x\\.br\\") == "\\E\\H\\E\\x\\E\\.br\\E\\"
    assert escape_text("one\r\ntwo\nthree\rfour\x00\x1b\tfive") == "one two three four five"
    for text in ("a|b^c&d~e\\f", "\\E\\", "\\F\\S\\", "plain"):
        assert unescape(escape_text(text)) == text


def test_same_document_gives_the_same_message() -> None:
    first = oru_r01(make_doc("draft"))
    assert oru_r01(make_doc("draft")) == first
    other = oru_r01(make_doc("draft", report_key="draft:13"))
    assert other != first and parse(other).msh.msh_10.to_er7() == "PVLM-draft-13"
    long_key = "signed:" + "9" * 40
    assert control_id(long_key) == control_id(long_key)
    assert len(control_id(long_key)) <= 20 and control_id(long_key) != control_id(long_key + "0")


def test_ct_small_header_fills_the_patient() -> None:
    header = pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True)
    doc = from_dicom_header(header, report_key="signed:3", status="signed", issued=ISSUED, text="Normal.", author="R")
    message = parse(oru_r01(doc))
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == "1CT1^^^^MR"
    assert pid.pid_5.to_er7() == "CompressedSamples^CT1"
    assert pid.pid_7.to_er7() == ""  # CT_small has an empty Patient's Birth Date
    assert pid.pid_8.to_er7() == "O"
    order = order_of(message)
    assert order.obr.obr_2.to_er7() == ""  # no accession number
    assert order.obr.obr_4.to_er7() == "^e+1"
    assert order.obr.obr_7.to_er7() == "20040119072730-0500"
    assert obx_segments(message)[0].obx_5.to_er7() == header.StudyInstanceUID


def test_missing_optional_fields_still_give_a_valid_message() -> None:
    header = Dataset()
    header.StudyInstanceUID = STUDY_UID
    header.StudyDate = "20260301"
    doc = from_dicom_header(header, report_key="draft:4", status="draft", issued=ISSUED, text="")
    message = parse(oru_r01(doc, receiving_application=""))
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == '""' and pid.pid_5.to_er7() == '""'  # HL7 explicit null for required fields
    assert pid.pid_8.to_er7() == ""
    obr = order_of(message).obr
    assert obr.obr_4.to_er7() == "18748-4^Diagnostic imaging study^LN"
    assert obr.obr_7.to_er7() == "20260301"  # a date without a time
    assert message.msh.msh_5.to_er7() == ""
    texts = [unescape(obx.obx_5.to_er7()) for obx in obx_segments(message)[1:]]
    assert texts == [AI_DRAFT_NOTICE, "", "FINDINGS:"]


@pytest.mark.parametrize(("sex", "code"), [("M", "M"), ("F", "F"), ("O", "O"), ("X", "U")])
def test_sex_codes(sex: str, code: str) -> None:
    pid = parse(oru_r01(make_doc("draft", patient_sex=sex))).oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_8.to_er7() == code


def test_comparison_has_its_own_observation_naming_the_prior() -> None:
    prior_uid = "1.2.826.0.1.3680043.8.498.7"
    comparison = "Compared with the CT of 2025-01-10 | nodule unchanged."
    prior = PriorReference.of(prior_uid, "20250110", modality="CT")
    for kind, status in (("draft", "P"), ("signed", "F")):
        message = parse(oru_r01(make_doc(kind, comparison=comparison, priors=(prior,))))
        obx = obx_segments(message)
        codes = [segment.obx_3.obx_3_1.value for segment in obx]
        assert codes[:4] == ["110180", "121018", "18834-2", "18748-4"]
        assert (obx[1].obx_2.value, obx[1].obx_4.value, obx[1].obx_5.value) == ("ST", "2.1", prior_uid)
        assert (obx[2].obx_2.value, obx[2].obx_4.value) == ("TX", "2")
        assert unescape(obx[2].obx_5.value) == comparison
        assert [segment.obx_1.value for segment in obx] == [str(n) for n in range(1, len(obx) + 1)]
        assert {segment.obx_11.value for segment in obx} == {status}


def test_no_prior_line_and_older_reports() -> None:
    obx = obx_segments(parse(oru_r01(make_doc(comparison="No prior study available."))))
    assert [s.obx_3.obx_3_1.value for s in obx[:3]] == ["110180", "18834-2", "18748-4"]
    assert obx[1].obx_5.value == "No prior study available."
    assert "18834-2" not in oru_r01(make_doc())
