"""Deflated Explicit VR Little Endian headers: read through a bounded inflate, bombs and cut streams refused."""

from __future__ import annotations

import zlib

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from integration.intake import header
from integration.intake.header import read_header
from integration.intake.structure import InvalidInstance
from tests.intake.test_header import encode, minimal_dataset


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_deflated_dataset_round_trip() -> None:
    ds = minimal_dataset(PatientComments="x" * 20_000)
    raw = encode(ds)
    got = read_header(deflate(raw), DeflatedExplicitVRLittleEndian)
    assert got.sop_instance_uid == ds.SOPInstanceUID
    assert got.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_deflated_dataset_inflating_past_the_limit_is_refused() -> None:
    ds = minimal_dataset(PatientComments="x" * 200_000)
    raw = encode(ds)
    packed = deflate(raw)
    assert len(packed) < 2_000  # a small message that inflates a lot (still under the 64 MiB floor)
    assert read_header(packed, DeflatedExplicitVRLittleEndian, max_inflated_bytes=len(raw)).sop_instance_uid == (
        ds.SOPInstanceUID
    )
    with pytest.raises(InvalidInstance, match="size limit"):
        read_header(packed, DeflatedExplicitVRLittleEndian, max_inflated_bytes=len(raw) - 1)
    with pytest.raises(InvalidInstance, match="size limit"):
        read_header(packed, DeflatedExplicitVRLittleEndian, max_inflated_bytes=4096)


def test_a_deflate_bomb_is_refused_by_its_inflate_ratio_before_the_size_limit() -> None:
    ds = minimal_dataset(PatientComments="x" * 200_000)
    packed = deflate(encode(ds))
    # a 100 MB data set deflated to ~100 kB: far beyond 64 x its size and above the 64 MiB floor
    bomb = deflate(encode(minimal_dataset(PatientComments="x" * (100 * 1024**2))))
    assert len(bomb) * header.MAX_INFLATE_RATIO < header.INFLATE_FLOOR_BYTES < 100 * 1024**2
    assert read_header(packed, DeflatedExplicitVRLittleEndian).sop_instance_uid == ds.SOPInstanceUID
    with pytest.raises(InvalidInstance, match="size limit"):
        read_header(bomb, DeflatedExplicitVRLittleEndian)


def test_deflate_stream_cut_at_a_flush_point_is_refused() -> None:
    ds = minimal_dataset()
    prefix = encode(ds)
    ds.ImageComments = "x" * 1000  # (0020,4000): encoded after every identifying attribute
    whole = encode(ds)
    assert whole.startswith(prefix)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    cut = len(stream)
    stream += compressor.compress(whole[len(prefix) :]) + compressor.flush()
    assert read_header(stream, DeflatedExplicitVRLittleEndian).sop_instance_uid == ds.SOPInstanceUID
    with pytest.raises(InvalidInstance):
        read_header(stream[:cut], DeflatedExplicitVRLittleEndian)


def test_garbage_that_does_not_inflate_is_refused() -> None:
    with pytest.raises(InvalidInstance):
        read_header(b"\xff" * 64, DeflatedExplicitVRLittleEndian)
    with pytest.raises(InvalidInstance):
        read_header(b"", DeflatedExplicitVRLittleEndian)
