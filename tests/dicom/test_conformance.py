"""The listener read against PS3.8 and PS3.7 on a real socket: abort reasons, rejections, C-CANCEL, timeouts.

The peer is a raw socket (to send what a conformant library never sends) or pynetdicom.
"""

from __future__ import annotations

import io
import socket
import struct
import time
import uuid
from collections.abc import Callable

import pydicom
from pynetdicom import AE, build_context, pdu
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

from integration.intake.header import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from tests.support.peers import ListenerProcess, wait_until
from tests.support.raw_dicom import CT_IMAGE_STORAGE, command_set, raw_associate, read_raw_pdu

ASSOCIATE_RJ, P_DATA_TF, ABORT = 0x03, 0x04, 0x07
VERIFICATION = "1.2.840.10008.1.1"


def send_pdv(sock: socket.socket, payload: bytes, control: int, context_id: int = 1) -> None:
    """Send one P-DATA-TF PDU holding one PDV item (control: bit 0 command, bit 1 last fragment)."""
    item = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    sock.sendall(struct.pack(">BxI", P_DATA_TF, len(item)) + item)


def cancel_command(message_id: int) -> bytes:
    """A C-CANCEL-RQ command set (PS3.7 9.3.2.3): Command Field 0FFF, the Message ID it cancels, no data set."""
    ds = pydicom.Dataset()
    ds.CommandField = 0x0FFF
    ds.MessageIDBeingRespondedTo = message_id
    ds.CommandDataSetType = 0x0101
    out = pydicom.filebase.DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(out, ds)
    return out.getvalue()


def response_of(body: bytes) -> pydicom.Dataset:
    """The command set of a P-DATA-TF PDU holding one whole command PDV."""
    return pydicom.filereader.read_dataset(io.BytesIO(body[6:]), is_implicit_VR=True, is_little_endian=True)


def test_an_unknown_pdu_type_aborts_with_unrecognized_pdu(listener: ListenerProcess) -> None:
    sock = raw_associate(listener.port)
    with sock:
        sock.sendall(b"\x0a\x00\x00\x00\x00\x04" + bytes(4))  # PDU type 0AH: no PDU of PS3.8 9.3
        pdu_type, body = read_raw_pdu(sock)
    assert (pdu_type, body[2], body[3]) == (ABORT, 2, 1)  # service provider, unrecognized PDU
    wait_until(lambda: "unknown PDU type 0x0A" in listener.log(), timeout=10, message="abort log line")


def test_a_known_pdu_out_of_place_aborts_with_unexpected_pdu(listener: ListenerProcess) -> None:
    sock = raw_associate(listener.port)
    with sock:
        sock.sendall(b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x01")  # an A-ASSOCIATE-RJ inside an association
        pdu_type, body = read_raw_pdu(sock)
    assert (pdu_type, body[2], body[3]) == (ABORT, 2, 2)  # service provider, unexpected PDU


def test_an_unsupported_protocol_version_is_rejected_by_the_acse_provider(listener: ListenerProcess) -> None:
    request = pdu.A_ASSOCIATE_RQ()
    primitive = pynetdicom_request("STORESCU", "PACSVLM")
    request.from_primitive(primitive)
    encoded = bytearray(request.encode())
    encoded[6:8] = (0x0002).to_bytes(2, "big")  # protocol version: bit 0 (version 1) not set
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(bytes(encoded))
        pdu_type, body = read_raw_pdu(sock)
    # result rejected-permanent, source service-provider (ACSE), reason protocol-version-not-supported
    assert (pdu_type, body[1], body[2], body[3]) == (ASSOCIATE_RJ, 1, 2, 2)


def pynetdicom_request(calling_ae: str, called_ae: str) -> A_ASSOCIATE:
    """An A-ASSOCIATE request primitive with one verification context."""

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling_ae, called_ae
    context = build_context(VERIFICATION)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 0
    primitive.user_information = [length]
    return primitive


def test_a_c_cancel_gets_no_response(listener: ListenerProcess) -> None:
    sock = raw_associate(listener.port)
    with sock:
        send_pdv(sock, cancel_command(3), control=0x03)
        send_pdv(sock, command_set(0x0030, CT_IMAGE_STORAGE, dataset_follows=False), control=0x03)  # C-ECHO-RQ
        pdu_type, body = read_raw_pdu(sock)  # the first answer is the echo's: the cancel got none
        assert pdu_type == P_DATA_TF
        assert response_of(body).CommandField == 0x8030
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert read_raw_pdu(sock)[0] == 0x06
    assert "C-CANCEL-RQ" in listener.log()


def test_a_stalled_dimse_message_is_aborted_after_the_dimse_timeout(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str
) -> None:
    env = {"PACSVLM_DIMSE_TIMEOUT": "1", "PACSVLM_NETWORK_TIMEOUT": "30"}
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=env)
    sock = raw_associate(listener.port)
    with sock:
        time.sleep(2)  # idle between messages: the network timeout (30 s) applies, not the DIMSE timeout
        send_pdv(sock, command_set(0x0030, CT_IMAGE_STORAGE, dataset_follows=False), control=0x03)
        pdu_type, body = read_raw_pdu(sock)
        assert pdu_type == P_DATA_TF and response_of(body).CommandField == 0x8030
        send_pdv(sock, command_set(0x0001, CT_IMAGE_STORAGE, dataset_follows=True), control=0x03)
        started = time.monotonic()
        pdu_type, body = read_raw_pdu(sock)  # ... and then no data set follows its C-STORE-RQ
        waited = time.monotonic() - started
    assert (pdu_type, body[2], body[3]) == (ABORT, 2, 0)
    assert 0.8 < waited < 10, waited
    wait_until(lambda: "past the DIMSE timeout" in listener.log(), timeout=10, message="abort log line")


def test_the_implementation_class_uid_is_a_uuid_derived_uid(listener: ListenerProcess) -> None:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="PACSVLM")
    assert assoc.is_established
    try:
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION
    finally:
        assoc.release()
    root, _, number = IMPLEMENTATION_CLASS_UID.partition("2.25.")
    assert root == "" and str(int(number)) == number  # 2.25 then an integer without leading zeros (PS3.5 B.2)
    assert uuid.UUID(int=int(number)).version == 4
