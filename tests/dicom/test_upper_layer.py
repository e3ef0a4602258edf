"""The upper-layer and DIMSE codecs of the listener, checked against pydicom and pynetdicom's own decoders."""

from __future__ import annotations

import asyncio
from io import BytesIO

import pytest
from pydicom.filereader import read_dataset
from pynetdicom import build_context, pdu

from integration.dicom import dimse
from integration.dicom import upper_layer as ul

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def a_store_command(message_id: int = 7) -> dimse.Command:
    return dimse.Command(dimse.C_STORE_RQ, message_id, True, CT_IMAGE, "1.2.3.4.5")


def test_response_command_set_reads_back_with_pydicom() -> None:
    encoded = dimse.encode_response(a_store_command(), 0xA700)
    ds = read_dataset(BytesIO(encoded), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(encoded) - 12
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo) == (0x8001, 7)
    assert (ds.CommandDataSetType, ds.Status) == (0x0101, 0xA700)
    assert (ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID) == (CT_IMAGE, "1.2.3.4.5")
    assert len(encoded) % 2 == 0


def test_request_command_set_written_by_pydicom_decodes() -> None:
    from pydicom import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.AffectedSOPClassUID = CT_IMAGE
    ds.CommandField = 0x0001
    ds.MessageID = 12
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = "1.2.3.4.5.6"
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    command = dimse.decode_command(out.getvalue())
    assert command == dimse.Command(dimse.C_STORE_RQ, 12, True, CT_IMAGE, "1.2.3.4.5.6")


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x01\x02",  # truncated element header
        b"\x00\x00\x00\x01\x02\x00\x00\x00\x01",  # value runs past the end
        b"\x08\x00\x00\x01\x02\x00\x00\x00\x01\x00",  # group 0008 in a command set
        b"\x00\x00\x10\x01\x02\x00\x00\x00\x07\x00",  # no Command Field
    ],
)
def test_malformed_command_sets_are_refused(data: bytes) -> None:
    with pytest.raises(dimse.InvalidCommand):
        dimse.decode_command(data)


def test_p_data_fragments_to_the_peer_maximum_and_reassembles() -> None:
    payload = bytes(range(256)) * 5
    encoded = ul.p_data(3, payload, is_command=False, peer_max_length=100)
    fragments, offset = [], 0
    while offset < len(encoded):
        assert encoded[offset] == ul.P_DATA_TF
        length = int.from_bytes(encoded[offset + 2 : offset + 6], "big")
        assert length <= 100
        items = list(ul.iter_pdvs(encoded[offset + 6 : offset + 6 + length]))
        fragments.extend(items)
        offset += 6 + length
    assert b"".join(bytes(f.fragment) for f in fragments) == payload
    assert [f.is_last for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert {(f.context_id, f.is_command) for f in fragments} == {(3, False)}


def test_p_data_decodes_with_pynetdicom() -> None:
    encoded = ul.p_data(5, b"\x01\x02\x03\x04", is_command=True, peer_max_length=0)
    decoded = pdu.P_DATA_TF()
    decoded.decode(encoded)
    assert decoded.presentation_data_value_items[0].presentation_context_id == 5
    assert decoded.presentation_data_value_items[0].presentation_data_value == b"\x03\x01\x02\x03\x04"


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x09\x01\x03", b"\x00\x00\x00\x01\x01"])
def test_broken_pdv_items_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ul.ProtocolError):
        list(ul.iter_pdvs(body))


def read(data: bytes, limit: int = 1024) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await ul.read_pdu(reader, limit)

    return asyncio.run(go())


def test_read_pdu_limits_by_type() -> None:
    assert read(ul.release_rp()) == (ul.RELEASE_RP, bytes(4))
    with pytest.raises(ul.ProtocolError, match="unknown PDU type"):
        read(b"\x09\x00\x00\x00\x00\x00")
    with pytest.raises(ul.ProtocolError, match="exceeds the limit"):
        read(b"\x04\x00\x00\x00\x08\x00" + bytes(2048), limit=1024)
    with pytest.raises(ul.ProtocolError, match="exceeds the limit"):
        read(b"\x07\x00\x00\x01\x00\x00")
    with pytest.raises(asyncio.IncompleteReadError):
        read(b"\x04\x00\x00\x00\x00\x10\x00")


def test_associate_rq_from_pynetdicom_is_negotiated_and_accepted() -> None:
    request = pdu.A_ASSOCIATE_RQ()
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    primitive = A_ASSOCIATE()
    primitive.application_context_name = ul.APPLICATION_CONTEXT
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "PACSVLM"
    contexts = [build_context(CT_IMAGE, ["1.2.840.10008.1.2.4.50"]), build_context("1.2.3.999", ["1.2.840.10008.1.2"])]
    for index, context in enumerate(contexts):
        context.context_id = 1 + 2 * index
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    request.from_primitive(primitive)
    encoded = request.encode()
    decoded = ul.decode_associate_rq(encoded[6:])
    assert (decoded.calling_ae, decoded.called_ae, decoded.max_length) == ("MODALITY", "PACSVLM", 16384)
    supported = [build_context(CT_IMAGE, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])]
    answer, accepted = ul.accept(decoded, supported, 131072)
    assert list(accepted) == [1] and accepted[1].transfer_syntax == ["1.2.840.10008.1.2.4.50"]
    ac = pdu.A_ASSOCIATE_AC()
    ac.decode(answer)
    results = {item.context_id: item.result for item in ac.presentation_context}
    assert results == {1: 0, 3: 3}  # accepted; abstract syntax not supported
    assert ac.user_information.maximum_length == 131072


def test_malformed_associate_rq_is_a_protocol_error() -> None:
    with pytest.raises(ul.ProtocolError, match="malformed A-ASSOCIATE-RQ"):
        ul.decode_associate_rq(b"\x00\x01\x00\x00" + b"garbage")


def test_reject_and_abort_pdus_decode_with_pynetdicom() -> None:
    rj = pdu.A_ASSOCIATE_RJ()
    rj.decode(ul.associate_rj(ul.REJECTED_TRANSIENT, ul.SOURCE_PRESENTATION, ul.REASON_LOCAL_LIMIT))
    assert (rj.result, rj.source, rj.reason_diagnostic) == (2, 3, 2)
    ab = pdu.A_ABORT_RQ()
    ab.decode(ul.abort(ul.ABORT_SOURCE_PROVIDER, ul.ABORT_UNEXPECTED_PDU))
    assert (ab.source, ab.reason_diagnostic) == (2, 2)
