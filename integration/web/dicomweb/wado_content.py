"""What WADO-RS reads from inside a stored file: metadata as DICOM JSON, frames and bulk data.

Metadata is read without the large values (pydicom's deferred reading: a value above
:data:`BULK_BYTES` is skipped, its place in the file remembered), so the metadata of a 300-slice series
reads 300 headers, not 150 MB of pixels; the pixel data and other large binary elements at the top level
become ``BulkDataURI`` s pointing at the bulk data route.  A frame of an uncompressed image is read
straight from its place in the file; a compressed one is decoded by pydicom's decoders (the same ones
:mod:`integration.imaging.pixels` uses) for one frame only, unless the client accepts the stored
compression, then the encapsulated frame goes out as stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pixel_array

from integration.imaging.pixels import UndecodableImage, number_of_frames
from integration.web.dicomweb.negotiation import NATIVE_SYNTAXES
from integration.web.dicomweb.wado_files import file_chunks

#: Binary values longer than this (bytes) are sent as bulk data, not inline.
BULK_BYTES = 1024
PIXEL_DATA = 0x7FE00010
#: Elements that hold pixel data (integer, float, double float).
PIXEL_TAGS = frozenset({PIXEL_DATA, 0x7FE00008, 0x7FE00009})
_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD"}
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Syntaxes whose frames can be read from the file at their offset (little endian, not deflated).
_OFFSET_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


class NoSuchFrame(LookupError):
    """The instance has no such frame, or no pixel data."""


def read_header(path: Path) -> Dataset:
    """Read a stored file with its large values left in the file (read when touched).

    Raises
    ------
    UndecodableImage
        When the file cannot be read as DICOM.
    """
    try:
        return pydicom.dcmread(path, defer_size=BULK_BYTES, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise UndecodableImage(f"the file cannot be read ({type(exc).__name__})") from exc


def _raw(ds: Dataset, tag: int) -> Any:
    """An element as stored, its deferred value not read."""
    return ds.get_item(tag, keep_deferred=True)


def _is_bulk(ds: Dataset, tag: int) -> bool:
    element = _raw(ds, tag)
    if tag in PIXEL_TAGS:
        return True
    if element is None or element.VR not in _BINARY_VRS:
        return False
    if isinstance(element, RawDataElement):
        return element.value is None or element.length > BULK_BYTES
    return False


def _pixel_vr(ds: Dataset, tag: int) -> str:
    if tag in _PIXEL_VR:
        return _PIXEL_VR[tag]
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    bits = ds.get("BitsAllocated") or 8
    return "OW" if syntax in NATIVE_SYNTAXES and int(bits) > 8 else "OB"


def instance_json(path: Path, bulk_uri: Callable[[int], str]) -> dict[str, Any]:
    """Return one object's data set as DICOM JSON (PS3.18 F.2), large binary values as ``BulkDataURI``.

    Parameters
    ----------
    path : pathlib.Path
        The stored file.
    bulk_uri : callable
        Gives the bulk data URI of a top-level tag.

    Returns
    -------
    dict
        Keyed by ``GGGGEEEE`` in tag order.

    Raises
    ------
    UndecodableImage
        When the file cannot be read.
    """
    ds = read_header(path)
    bulk: dict[int, str] = {}
    for key in list(ds.keys()):
        tag = int(key)
        if _is_bulk(ds, tag):
            element = _raw(ds, tag)
            bulk[tag] = _pixel_vr(ds, tag) if tag in PIXEL_TAGS else str(element.VR)
            del ds[tag]
    found = ds.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)
    for tag, vr in bulk.items():
        found[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": bulk_uri(tag)}
    return dict(sorted(found.items()))


def _check_frames(ds: Dataset, numbers: list[int]) -> int:
    if "PixelData" not in ds:
        raise NoSuchFrame("the instance has no pixel data")
    frames = number_of_frames(ds)
    for number in numbers:
        if not 1 <= number <= frames:
            raise NoSuchFrame(f"frame {number} is out of range for {frames} frame(s)")
    return frames


def native_frame_length(ds: Dataset) -> int | None:
    """Bytes per frame of uncompressed pixel data whose frames lie whole-byte aligned in the file, else None."""
    bits = int(ds.get("BitsAllocated") or 0)
    if bits % 8 or not bits:
        return None
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * bits // 8


def frame_reader(
    path: Path, numbers: list[int], encapsulated_ok: bool
) -> tuple[str, list[Callable[[], Iterator[bytes]]]]:
    """Plan the reading of frames: their media type and, per frame, a function reading it.

    Parameters
    ----------
    path : pathlib.Path
        The stored file.
    numbers : list of int
        1-based frame numbers.
    encapsulated_ok : bool
        Whether the client accepts compressed frames in the stored syntax (then they go out as stored).

    Returns
    -------
    tuple of (str, list of callable)
        ``"octet-stream"`` (uncompressed little-endian bytes) or ``"encapsulated"``, and the readers.

    Raises
    ------
    NoSuchFrame
        No pixel data, or a frame number out of range.
    UndecodableImage
        When the file cannot be read.
    """
    ds = read_header(path)
    frames = _check_frames(ds, numbers)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    element = _raw(ds, PIXEL_DATA)
    length = native_frame_length(ds)
    if syntax in _OFFSET_SYNTAXES and length and isinstance(element, RawDataElement) and element.value is None:
        start = element.value_tell

        def at(number: int) -> Callable[[], Iterator[bytes]]:
            return lambda: file_chunks(path, start + (number - 1) * length, length)

        return "octet-stream", [at(number) for number in numbers]
    if encapsulated_ok and syntax not in NATIVE_SYNTAXES:

        def encapsulated(number: int) -> Callable[[], Iterator[bytes]]:
            def read() -> Iterator[bytes]:
                whole = pydicom.dcmread(path, force=True)
                yield get_frame(whole.PixelData, number - 1, number_of_frames=frames)

            return read

        return "encapsulated", [encapsulated(number) for number in numbers]

    def decoded(number: int) -> Callable[[], Iterator[bytes]]:
        def read() -> Iterator[bytes]:
            yield decode_frame_bytes(path, number)

        return read

    return "octet-stream", [decoded(number) for number in numbers]


def decode_frame_bytes(path: Path, number: int) -> bytes:
    """Decode one frame (1-based) to uncompressed little-endian bytes (colour as RGB, interleaved).

    Raises
    ------
    UndecodableImage
        When the frame cannot be decoded.
    """
    try:
        array = pixel_array(str(path), index=number - 1)
    except Exception as exc:  # pydicom and its plugins raise many types for damaged data
        raise UndecodableImage(f"frame {number} cannot be decoded ({type(exc).__name__})") from exc
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def bulk_reader(path: Path, tag: int) -> Callable[[], Iterator[bytes]] | None:
    """A function reading a top-level element's value as stored, or None when the object has no such element.

    Raises
    ------
    UndecodableImage
        When the file cannot be read.
    """
    ds = read_header(path)
    element = _raw(ds, tag)
    if element is None:
        return None
    if isinstance(element, RawDataElement) and element.value is None:
        start, length = element.value_tell, element.length
        return lambda: file_chunks(path, start, length)
    value = ds[tag].value
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return lambda: iter([data])
