"""The DICOM wire for benchmarks and tests: A-ASSOCIATE-RQ, P-DATA-TF and C-STORE built by hand.

Hand-built PDUs let :mod:`bench.fuzz`, :mod:`bench.hostile` and the reliability tests send what no
conforming library would (wrong lengths, half-sent requests, odd fragments), and read back exactly what
the listener answered.  The seed instance is pydicom's ``CT_small.dcm`` with fresh UIDs.
"""

import io
import socket
import time
from dataclasses import dataclass
from functools import lru_cache

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
#: Presentation context ids of the fuzzing association: 1 explicit VR LE, 3 deflated.
CONTEXTS = {1: EXPLICIT_LE, 3: DEFLATED_LE}
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
ABORT_RQ = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())


# --------------------------------------------------------------------------- the DICOM wire


def associate_rq(
    calling_ae: str = "FUZZER", called_ae: str = "PACSVLM", contexts: dict[int, str] | None = None
) -> bytes:
    """Encode an A-ASSOCIATE-RQ proposing CT Image Storage on the given contexts.

    Parameters
    ----------
    calling_ae, called_ae : str
        AE titles.
    contexts : dict of int to str, optional
        Context id -> transfer syntax; :data:`CONTEXTS` when omitted.

    Returns
    -------
    bytes
        The PDU.
    """
    from pynetdicom import build_context, pdu
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling_ae, called_ae
    proposed = []
    for context_id, syntax in (contexts or CONTEXTS).items():
        context = build_context(CT_IMAGE_STORAGE, [syntax])
        context.context_id = context_id
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    length = MaximumLengthNotification()
    length.maximum_length_received = 0
    primitive.user_information = [length]
    request = pdu.A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def pdv(context_id: int, payload: bytes, *, command: bool, last: bool) -> bytes:
    """Encode one PDV item: length, context id, message control header, fragment."""
    control = (1 if command else 0) | (2 if last else 0)
    return (len(payload) + 2).to_bytes(4, "big") + bytes((context_id, control)) + payload


def p_data(*items: bytes) -> bytes:
    """Encode a P-DATA-TF PDU holding the given PDV items."""
    body = b"".join(items)
    return b"\x04\x00" + len(body).to_bytes(4, "big") + body


def store_command(sop_instance_uid: str, message_id: int = 1, sop_class_uid: str = CT_IMAGE_STORAGE) -> bytes:
    """Encode a C-STORE-RQ command set (Implicit VR Little Endian, group 0000)."""

    def element(tag: int, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        return (
            (tag >> 16).to_bytes(2, "little")
            + (tag & 0xFFFF).to_bytes(2, "little")
            + len(value).to_bytes(4, "little")
            + value
        )

    body = b"".join(
        (
            element(0x00000002, sop_class_uid.encode()),
            element(0x00000100, (0x0001).to_bytes(2, "little")),
            element(0x00000110, message_id.to_bytes(2, "little")),
            element(0x00000700, b"\x00\x00"),
            element(0x00000800, b"\x00\x00"),
            element(0x00001000, sop_instance_uid.encode()),
        )
    )
    return element(0x00000000, len(body).to_bytes(4, "little")) + body


@dataclass(frozen=True)
class Answer:
    """What came back: a PDU type (0 when the connection closed), a DIMSE status, or nothing in time."""

    pdu_type: int | None
    status: int | None = None

    @property
    def label(self) -> str:
        """A short name: ``status 0xC000``, ``A-ABORT``, ``closed``, ``timeout`` ..."""
        if self.pdu_type is None:
            return "timeout"
        if self.status is not None:
            return f"status 0x{self.status:04X}"
        return {
            0: "closed",
            2: "A-ASSOCIATE-AC",
            3: "A-ASSOCIATE-RJ",
            4: "P-DATA",
            6: "A-RELEASE-RP",
            7: "A-ABORT",
        }.get(self.pdu_type, f"PDU 0x{self.pdu_type:02X}")


def read_answer(sock: socket.socket, timeout: float) -> Answer:
    """Read one PDU (a P-DATA's DIMSE status is decoded); closed -> type 0, nothing in time -> None.

    Parameters
    ----------
    sock : socket.socket
        The connection.
    timeout : float
        Seconds to wait for the whole PDU.

    Returns
    -------
    Answer
        What arrived.
    """
    deadline = time.monotonic() + timeout

    def read(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                chunk = sock.recv(n - len(data))
            except TimeoutError:
                return None
            except OSError:
                return b""
            if not chunk:
                return b""
            data += chunk
        return data

    header = read(6)
    if header is None:
        return Answer(None)
    if len(header) < 6:
        return Answer(0)
    body = read(int.from_bytes(header[2:6], "big"))
    if body is None:
        return Answer(None)
    if header[0] == 0x04 and len(body) > 6:
        return Answer(4, _status_of(body[6:]))
    return Answer(header[0])


def _status_of(command: bytes) -> int | None:
    offset = 0
    while offset + 8 <= len(command):
        tag = int.from_bytes(command[offset : offset + 2], "little") << 16 | int.from_bytes(
            command[offset + 2 : offset + 4], "little"
        )
        length = int.from_bytes(command[offset + 4 : offset + 8], "little")
        if tag == 0x00000900 and length == 2:
            return int.from_bytes(command[offset + 8 : offset + 10], "little")
        offset += 8 + length
    return None


def open_association(port: int, timeout: float, calling_ae: str = "FUZZER") -> socket.socket:
    """Open a valid association (:data:`CONTEXTS`) as ``calling_ae`` and return its socket.

    Raises
    ------
    ConnectionError
        If the listener did not accept.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(associate_rq(calling_ae))
    answer = read_answer(sock, timeout)
    if answer.pdu_type != 0x02:
        sock.close()
        raise ConnectionError(f"association not accepted: {answer.label}")
    return sock


def send_store(
    port: int,
    dataset: bytes,
    sop_instance_uid: str,
    *,
    context_id: int = 1,
    timeout: float = 30,
    calling_ae: str = "FUZZER",
) -> Answer:
    """Send one C-STORE (data set in 16 KiB fragments) on a fresh association; release it after an answer.

    Parameters
    ----------
    port : int
        The listener's port.
    dataset : bytes
        Data set bytes as they go on the wire.
    sop_instance_uid : str
        Affected SOP Instance UID of the command.
    context_id : int
        1 (Explicit VR Little Endian) or 3 (Deflated).
    timeout : float
        Seconds to wait for the answer.
    calling_ae : str
        Our AE title.

    Returns
    -------
    Answer
        The status, an abort, a close or a timeout.
    """
    with open_association(port, timeout, calling_ae) as sock:
        try:
            sock.sendall(p_data(pdv(context_id, store_command(sop_instance_uid), command=True, last=True)))
            step = 16384
            for start in range(0, max(len(dataset), 1), step):
                last = start + step >= len(dataset)
                sock.sendall(p_data(pdv(context_id, dataset[start : start + step], command=False, last=last)))
        except OSError:
            pass  # the listener may abort before all was sent: read its answer
        answer = read_answer(sock, timeout)
        if answer.status is not None:
            try:
                sock.sendall(RELEASE_RQ)
                read_answer(sock, timeout)
            except OSError:
                pass
        return answer


# --------------------------------------------------------------------------- the seed instance


@lru_cache(maxsize=1)
def _ct_dataset_template() -> bytes:
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from integration.samples import pydicom_test_file

    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def ct_instance(study_uid: str | None = None, series_uid: str | None = None) -> tuple[bytes, str]:
    """Return a valid CT data set (Explicit VR Little Endian) with fresh UIDs, and its SOP Instance UID.

    Parameters
    ----------
    study_uid, series_uid : str, optional
        UIDs to use; fresh ones when omitted.

    Returns
    -------
    tuple of (bytes, str)
        The encoded data set and its SOP Instance UID.
    """
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(_ct_dataset_template()), force=True)
    sop_uid = generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue(), sop_uid


@dataclass(frozen=True)
class ElementHeader:
    """Where a top-level element's header and length field are in an Explicit VR LE data set."""

    offset: int
    length_offset: int
    length_size: int


def element_headers(data: bytes) -> list[ElementHeader]:
    """List the top-level element headers of a valid Explicit VR Little Endian data set."""
    headers, offset = [], 0
    while offset + 8 <= len(data):
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            length, length_offset, size, header = int.from_bytes(data[offset + 8 : offset + 12], "little"), 8, 4, 12
        else:
            length, length_offset, size, header = int.from_bytes(data[offset + 6 : offset + 8], "little"), 6, 2, 8
        headers.append(ElementHeader(offset, offset + length_offset, size))
        if length == 0xFFFFFFFF:
            break
        offset += header + length
    return headers


def file_meta(sop_instance_uid: str, syntax: str = EXPLICIT_LE) -> bytes:
    """Return the Part 10 preamble and file meta group of a CT instance."""
    from integration.intake.header import file_meta_bytes

    return file_meta_bytes(CT_IMAGE_STORAGE, sop_instance_uid, syntax, "FUZZER")
