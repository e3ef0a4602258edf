"""HL7 order messages for the tests: ORM^O01 and OMI^O23 built field by field (1-based field numbers)."""

from __future__ import annotations

SB, EB, CR = b"\x0b", b"\x1c", b"\r"


def segment(name: str, fields: dict[int, str]) -> str:
    """One segment from its fields by number (MSH-1 is the field separator, so MSH fields start at 2)."""
    last = max(fields, default=0)
    values = [fields.get(n, "") for n in range(1, last + 1)]
    if name == "MSH":
        return "MSH|" + "|".join(values[1:])
    return "|".join([name, *values])


def msh(
    kind: str = "ORM^O01",
    version: str = "2.5.1",
    control_id: str = "MSG0001",
    application: str = "RIS",
    facility: str = "NORTH",
    charset: str = "",
) -> str:
    fields = {2: "^~\\&", 3: application, 4: facility, 5: "PACSVLM", 6: "PACS", 7: "20240101120000"}
    fields.update({9: kind, 10: control_id, 11: "P", 12: version})
    if charset:
        fields[18] = charset
    return segment("MSH", fields)


def order_message(
    control: str = "NW",
    *,
    kind: str = "ORM^O01",
    version: str = "2.5.1",
    control_id: str = "MSG0001",
    accession: str = "ACC0001",
    patient_id: str = "PAT001",
    issuer: str = "HOSP",
    priority: str = "R",
    indication: str = "chest pain^Chest pain, rule out PE",
    application: str = "RIS",
    facility: str = "NORTH",
    charset: str = "",
    patient_name: str = "DOE^JOHN",
) -> str:
    """An ORM^O01 (accession in OBR-18) or OMI^O23 (accession in IPC-1, TQ1 timing) for one order."""
    segments = [
        msh(kind, version, control_id, application, facility, charset),
        segment("PID", {1: "1", 3: f"{patient_id}^^^{issuer}^MR", 5: patient_name, 7: "19700101", 8: "M"}),
        segment("PV1", {1: "1", 2: "O"}),
    ]
    orc = {1: control, 2: "PL123", 3: "FL456", 12: "1234^SMITH^JANE^^^DR"}
    obr = {1: "1", 2: "PL123", 3: "FL456", 4: "CTCHEST^CT Chest with contrast^L", 16: "1234^SMITH^JANE"}
    obr.update({24: "CT", 31: indication, 36: "20240102103000+0100"})
    if kind.startswith("OMI"):
        segments += [
            segment("ORC", orc),
            segment("TQ1", {1: "1", 7: "20240102103000+0100", 9: priority}),
            segment("OBR", obr),
            segment("IPC", {1: accession, 2: "RP1", 3: "1.2.826.0.1.3680043.2.1143.1", 4: "SPS1", 5: "CT"}),
        ]
    else:
        orc[7] = f"^^^20240102103000+0100^^{priority}"
        obr[18] = accession
        segments += [segment("ORC", orc), segment("OBR", obr)]
    return "\r".join(segments)


def unframe(response: bytes) -> str:
    """The ACK inside an MLLP frame (python-hl7's client returns the frame as it came)."""
    assert response.startswith(SB) and response.endswith(EB + CR), response[:40]
    return response[1:-2].decode("utf-8")
