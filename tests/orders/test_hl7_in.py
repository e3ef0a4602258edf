"""HL7 ORM^O01 / OMI^O23 parsing (hl7apy) and our ACKs, read back with python-hl7 (another parser)."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from integration.orders.hl7_in import (
    Header,
    HL7Error,
    build_ack,
    check_header,
    decode,
    parse_orders,
    parse_timestamp,
    read_header,
)
from integration.orders.order import OrderControl, OrderMessage, OrderPriority
from tests.orders.samples import msh, order_message, segment

ORM_VERSIONS = ["2.3", "2.3.1", "2.4", "2.5.1"]


def parse(text: str) -> list[OrderMessage]:
    raw = text.encode("utf-8")
    header = read_header(raw)
    check_header(header)
    return parse_orders(decode(raw, header), header)


def refusal(text: str | bytes) -> HL7Error:
    with pytest.raises(HL7Error) as caught:
        parse(text.decode("latin-1") if isinstance(text, bytes) else text)
    return caught.value


@pytest.mark.parametrize("version", ORM_VERSIONS)
def test_orm_fields_in_every_version(version: str) -> None:
    (order,) = parse(order_message(version=version, priority="S", control_id="M-1"))
    assert order.control is OrderControl.NEW
    assert order.accession_number == "ACC0001"  # OBR-18
    assert (order.patient_id, order.issuer_of_patient_id) == ("PAT001", "HOSP")
    assert (order.placer_order_number, order.filler_order_number) == ("PL123", "FL456")
    assert (order.procedure_code, order.procedure_text, order.procedure_coding_system) == (
        "CTCHEST",
        "CT Chest with contrast",
        "L",
    )
    assert order.indication == "Chest pain, rule out PE"  # OBR-31 text
    assert order.priority is OrderPriority.STAT  # ORC-7.6 S
    assert order.ordering_provider == "DR JANE SMITH"  # ORC-12
    assert order.modality == "CT"  # OBR-24
    assert order.scheduled_at == datetime(2024, 1, 2, 9, 30, tzinfo=UTC)  # OBR-36 at +0100
    assert order.message_id == "M-1"


@pytest.mark.parametrize("version", ["2.5", "2.5.1"])
def test_omi_takes_ipc_and_tq1(version: str) -> None:
    text = order_message(kind="OMI^O23^OMI_O23", version=version, accession="ACC-OMI", priority="A")
    (order,) = parse(text)
    assert order.accession_number == "ACC-OMI"  # IPC-1
    assert order.priority is OrderPriority.STAT  # TQ1-9 A (ASAP)
    assert order.modality == "CT"  # IPC-5
    assert order.scheduled_at == datetime(2024, 1, 2, 9, 30, tzinfo=UTC)  # TQ1-7


@pytest.mark.parametrize("control", ["NW", "XO", "CA", "DC"])
def test_all_four_order_controls(control: str) -> None:
    (order,) = parse(order_message(control))
    assert order.control == OrderControl(control)


def test_routine_priority_and_no_indication() -> None:
    (order,) = parse(order_message(priority="R", indication=""))
    assert order.priority is OrderPriority.ROUTINE
    assert order.indication is None


def test_escapes_and_repetitions_are_decoded() -> None:
    (order,) = parse(order_message(indication="^Pain \\T\\ swelling \\F\\ left~^fever"))
    assert order.indication == "Pain & swelling | left; fever"


def test_two_orders_in_one_message() -> None:
    text = order_message()
    text += "\r" + segment("ORC", {1: "NW", 2: "PL2"}) + "\r" + segment("OBR", {1: "2", 18: "ACC0002"})
    assert [o.accession_number for o in parse(text)] == ["ACC0001", "ACC0002"]


def test_utc_assumed_without_zone() -> None:
    assert parse_timestamp("202401021030") == datetime(2024, 1, 2, 10, 30, tzinfo=UTC)
    assert parse_timestamp("20240102103000.5-0500") == datetime(2024, 1, 2, 15, 30, 0, 500000, tzinfo=UTC)
    with pytest.raises(HL7Error, match="not an HL7 date/time"):
        parse_timestamp("tomorrow", "OBR-36")


@pytest.mark.parametrize(
    ("text", "ack_code", "error_code", "says"),
    [
        (order_message("SC"), "AE", 103, "order control SC not supported"),
        (order_message(accession=""), "AE", 101, "no accession number (OBR-18)"),
        (order_message(kind="OMI^O23", accession=""), "AE", 101, "no accession number (IPC-1)"),
        (order_message(patient_id=""), "AE", 101, "no patient ID"),
        (order_message(accession="A" * 17), "AE", 102, "accession number longer than 16"),
        (order_message(kind="ADT^A01"), "AR", 200, "message type ADT^A01 is not supported"),
        (order_message(kind="ORM^O02"), "AR", 201, "event O02 of ORM is not supported"),
        (order_message(version="2.6"), "AR", 203, "version 2.6 is not supported"),
        (order_message(kind="OMI^O23", version="2.4"), "AR", 203, "version 2.4 is not supported"),
        (order_message(control_id=""), "AR", 101, "MSH-10"),
        (order_message(version=""), "AR", 101, "MSH-12"),
        (order_message().replace("^~\\&", "^~\\", 1), "AR", 102, "bad encoding characters"),
        (order_message().replace("^~\\&", "^^\\&", 1), "AR", 102, "bad encoding characters"),
        ("PID|1||X\r" + order_message(), "AR", 100, "does not start with an MSH"),
    ],
)
def test_refusals(text: str, ack_code: str, error_code: int, says: str) -> None:
    error = refusal(text)
    assert (error.ack_code, error.error_code) == (ack_code, error_code)
    assert says in error.text


def test_segment_order_errors() -> None:
    lines = order_message().split("\r")  # MSH PID PV1 ORC OBR
    orc_first = [lines[0], lines[3], lines[1], lines[2], lines[4]]
    obr_before_orc = [lines[0], lines[1], lines[2], lines[4], lines[3]]
    two_pids = [*lines, lines[1]]
    for segments, named in ((orc_first, "PID"), (obr_before_orc, "ORC"), (two_pids, "PID")):
        error = refusal("\r".join(segments))
        assert (error.ack_code, error.error_code) == ("AR", 100)
        assert f"segment {named}" in error.text
    error = refusal("\r".join(lines[:3]))
    assert (error.error_code, error.text) == (100, "the message has no ORC segment")


def test_character_sets() -> None:
    name = "MÜLLER^JÖRG"
    utf8 = order_message(patient_name=name).encode("utf-8")
    assert decode(utf8, read_header(utf8)).count("MÜLLER") == 1  # undeclared but valid UTF-8: taken
    latin1 = order_message(patient_name=name).encode("latin-1")
    with pytest.raises(HL7Error, match="undeclared character set") as caught:
        decode(latin1, read_header(latin1))
    assert (caught.value.ack_code, caught.value.error_code) == ("AR", 102)
    declared = order_message(patient_name=name, charset="8859/1").encode("latin-1")
    assert "MÜLLER" in decode(declared, read_header(declared))
    unknown = order_message(charset="EBCDIC").encode()
    with pytest.raises(HL7Error, match="EBCDIC"):
        decode(unknown, read_header(unknown))


@pytest.mark.parametrize("version", [*ORM_VERSIONS, None])
def test_ack_fields(version: str | None) -> None:
    header = read_header(order_message(version=version or "2.5.1", control_id="CTRL-9").encode()) if version else None
    for code, error_code in (("AA", None), ("AE", 204), ("AR", 207)):
        ack = hl7.parse(build_ack(header, code, "why | not" if error_code else None, error_code))
        assert ack.extract_field("MSA", 1, 1) == code
        assert ack.extract_field("MSA", 1, 2) == ("CTRL-9" if header else "")
        if header is not None:  # sender and receiver swapped
            assert [ack.extract_field("MSH", 1, n) for n in (3, 4, 5, 6)] == ["PACSVLM", "PACS", "RIS", "NORTH"]
            assert ack.extract_field("MSH", 1, 12) == version
            assert ack.extract_field("MSH", 1, 9, 1, 2) == "O01"
        if error_code is None:
            assert not ack.segments("MSA")[0][3:] or not str(ack.segments("MSA")[0][3])
            with pytest.raises(KeyError):
                ack.segment("ERR")
            continue
        assert ack.extract_field("MSA", 1, 3) == "why | not"  # escaped by us, unescaped by python-hl7
        err = ack.segment("ERR")
        if (version or "2.5.1") in ("2.3", "2.3.1", "2.4"):
            assert str(err[1][0][3]).startswith(str(error_code))  # ERR-1.4 (CE in subcomponents)
            assert ack.extract_field("MSA", 1, 6, 1, 1) == str(error_code)
        else:
            assert ack.extract_field("ERR", 1, 3, 1, 1) == str(error_code)
            assert ack.extract_field("ERR", 1, 4) == "E"


def test_header_of_a_message_with_other_delimiters() -> None:
    text = msh().replace("|", "#").replace("MSH#^~\\&", "MSH#^~\\&")
    header = read_header(text.encode())
    assert header == Header(
        field="#",
        sending_application="RIS",
        sending_facility="NORTH",
        receiving_application="PACSVLM",
        receiving_facility="PACS",
        message_type="ORM^O01",
        control_id="MSG0001",
        version="2.5.1",
    )


def test_z_segments_are_ignored_and_segment_names_checked() -> None:
    lines = order_message().split("\r")
    (order,) = parse("\r".join([lines[0], "ZDS|1.2.3^^Application^DICOM", *lines[1:], "ZXX|anything"]))
    assert order.accession_number == "ACC0001"
    error = refusal("\r".join([*lines, "ob|x"]))
    assert (error.error_code, error.text) == (100, "a segment name is not three letters or digits")
