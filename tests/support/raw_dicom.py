"""Talking DICOM to the listener by hand: raw associations and PDUs, and pynetdicom sends of one file."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
from pynetdicom import AE, _config

from tests.support.records import db_rows

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta group."""
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL value right after 'DICM'
    return raw[144 + group_length :]


def study_states(url: str) -> dict[str, tuple[str, int]]:
    return {
        uid: (state, version) for uid, state, version in db_rows(url, "SELECT study_uid, state, version FROM studies")
    }


def send_raw(port: int, path: Path, calling_ae: str = "STORESCU") -> int:
    """Send a file's data set bytes as they are (pynetdicom streams a file without decoding it)."""
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file's data set bytes without decoding them
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSVLM")
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(path)
        return int(answer.Status)
    finally:
        assoc.release()


def raw_associate(port: int, calling_ae: str = "STORESCU") -> socket.socket:
    """Open an association by hand: one CT Image Storage context (ID 1) in Explicit VR Little Endian."""
    from pynetdicom import build_context, pdu
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling_ae, "PACSVLM"
    context = build_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1"])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 0
    primitive.user_information = [length]
    request = pdu.A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request.encode())
    pdu_type, _ = read_raw_pdu(sock)
    assert pdu_type == 0x02, "association not accepted"
    return sock


def read_raw_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = sock.recv(6, socket.MSG_WAITALL)
    if len(header) < 6:
        return 0, b""
    length = int.from_bytes(header[2:6], "big")
    return header[0], sock.recv(length, socket.MSG_WAITALL)


def command_set(command_field: int, sop_class: str, dataset_follows: bool) -> bytes:
    from pydicom import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = command_field
    ds.MessageID = 3
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000 if dataset_follows else 0x0101
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return out.getvalue()
