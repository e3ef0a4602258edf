"""Read and check the header of an incoming instance without decoding pixels.

:func:`read_header` parses a received data set (the bytes a C-STORE or a
STOW-RS part carried), checks that it is structurally whole and that its UIDs
are valid, and returns an :class:`InstanceHeader`.  :func:`file_meta_bytes`
encodes the Part 10 preamble and file meta for storing those bytes as a file.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from integration import __version__
from integration.intake.structure import (
    ACCESSION_NUMBER,
    BODY_PART,
    INSTANCE_NUMBER,
    ISSUER_OF_PATIENT_ID,
    MODALITY,
    NUMBER_OF_FRAMES,
    PATIENT_ID,
    PATIENT_IDENTITY,
    SERIES_NUMBER,
    SERIES_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_UID,
    InvalidInstance,
    walk_dataset,
)
from integration.uids import is_valid_uid

#: Our implementation class UID (file meta, A-ASSOCIATE-AC) and version name.  We own no registered root, so the
#: UID is ``2.25.`` and the integer of one random (version 4) UUID, 8344aad5-19a3-4f97-aa48-67b1aae14c1b
#: (PS3.5 B.2), computed once and fixed here.  An earlier value was no valid UUID (version nibble 9).
IMPLEMENTATION_CLASS_UID = "2.25.174485408527370139970226261407947639835"
IMPLEMENTATION_VERSION = f"PACSVLM_{__version__}"[:16]
#: Integer-string attributes that must be numbers for the pixels to be readable.
_NUMERIC_IMAGE_TAGS = (NUMBER_OF_FRAMES,)
_NAMES = {
    SOP_CLASS_UID: "SOPClassUID",
    SOP_INSTANCE_UID: "SOPInstanceUID",
    STUDY_UID: "StudyInstanceUID",
    SERIES_UID: "SeriesInstanceUID",
    NUMBER_OF_FRAMES: "NumberOfFrames",
}
#: Inflated data sets larger than this are refused (decompression bombs).
MAX_INFLATED_BYTES = 2 * 1024**3
#: A deflated data set may inflate to this many times its size (DICOM deflates 2-10x; bombs 1000x) ...
MAX_INFLATE_RATIO = 64
#: ... or to this size, whichever is larger, so small data sets of mostly zeros still pass.
INFLATE_FLOOR_BYTES = 64 * 1024**2
_INFLATE_CHUNK = 1024**2
#: One inflation at a time per process: concurrent bombs cannot multiply the memory of one.
_INFLATING = threading.Lock()


class SopClassMismatch(InvalidInstance):
    """The data set's SOP Class or Instance UID disagrees with the C-STORE request."""


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying attributes of a received instance, validated.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid, study_uid, series_uid : str
        Valid UIDs.
    transfer_syntax_uid : str
        Transfer syntax the data set is encoded in.
    modality, body_part : str or None
        From the series module, when present.
    series_number, instance_number : int or None
        From the header, when present and numeric.
    patient_key : str or None
        A digest of the patient identity (Patient ID, Issuer of Patient ID, Patient's Name, Birth Date; see
        :func:`patient_key`): every instance of a study must carry the same. The values themselves are not kept.
    accession_number, patient_id, issuer_of_patient_id : str or None
        What a new study is matched to its RIS order by (:func:`integration.store.orders.link_order`); patient
        data, never logged (left out of the ``repr``).
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    body_part: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    patient_key: str | None = None
    accession_number: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)
    issuer_of_patient_id: str | None = field(default=None, repr=False)


def patient_key(values: dict[int, bytes]) -> str:
    """Digest the patient identity of raw header values (SHA-256, hex).

    Values are compared as sent, except for what encodings vary in without naming another patient: padding
    (spaces, NULs), letter case of ASCII names and empty trailing name components (``DOE^JOHN^^``).

    Parameters
    ----------
    values : dict of int to bytes
        Raw top-level values by tag (absent attributes count as empty).

    Returns
    -------
    str
        64 hex digits.
    """
    parts = []
    for tag in PATIENT_IDENTITY:
        raw = values.get(tag, b"").strip(b" \x00")
        if tag == PATIENT_IDENTITY[2]:
            raw = raw.rstrip(b"^=").upper()
        parts.append(raw)
    return hashlib.sha256(b"\x1f".join(parts)).hexdigest()


@contextmanager
def _inflated(data: bytes | memoryview, max_inflated_bytes: int, spill_dir: Path | None) -> Iterator[memoryview]:
    """Inflate a deflated data set in chunks, refusing it as soon as it grows past its allowance.

    With ``spill_dir`` the inflated bytes go to an unlinked file there and are walked through a memory
    map, so the process holds only the pages the walk touches (element headers, not pixel data) instead
    of the whole inflated data set; one inflation runs at a time per process.
    """
    limit = min(max_inflated_bytes, max(INFLATE_FLOOR_BYTES, MAX_INFLATE_RATIO * len(data)))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with _INFLATING, tempfile.TemporaryFile(dir=spill_dir) if spill_dir else nullcontext() as spill:
        inflated = bytearray()
        size = 0
        pending: bytes | memoryview = data
        try:
            while True:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
                size += len(chunk)
                if size > limit:
                    raise InvalidInstance("deflated data set inflates beyond the size limit")
                if spill is not None:
                    spill.write(chunk)
                else:
                    inflated += chunk
                pending = inflater.unconsumed_tail
                if inflater.eof or not pending:
                    break
        except zlib.error as exc:
            raise InvalidInstance("deflated data set does not inflate") from exc
        if not inflater.eof:
            raise InvalidInstance("deflated data set is truncated")
        if spill is None or size == 0:
            yield memoryview(inflated)
            return
        spill.flush()
        mapped = mmap.mmap(spill.fileno(), size, prot=mmap.PROT_READ)
        view = memoryview(mapped)
        try:
            yield view
        finally:
            try:
                view.release()
                mapped.close()
            except BufferError:
                pass  # still referenced (an exception's traceback): unmapped when that is freed


def read_header(
    data: bytes | memoryview,
    transfer_syntax_uid: str,
    *,
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
    spill_dir: Path | None = None,
) -> InstanceHeader:
    """Parse and validate a data set (without file meta) in a transfer syntax.

    The whole element structure is walked strictly (every length must fit,
    every VR must be a DICOM VR, sequences and encapsulated pixel data must be
    delimited), so a truncated or garbled data set is refused; only the
    identifying top-level values are decoded.  Pixel data is never decoded.

    Parameters
    ----------
    data : bytes-like
        The encoded data set.
    transfer_syntax_uid : str
        The transfer syntax it is encoded in.
    expected_sop_class_uid, expected_sop_instance_uid : str, optional
        The Affected SOP Class/Instance UIDs of the C-STORE request; the data
        set must carry the same.
    max_inflated_bytes : int
        Largest inflated size of a deflated data set (the instance size limit); a data set may also
        inflate to at most :data:`MAX_INFLATE_RATIO` times its size (or :data:`INFLATE_FLOOR_BYTES`).
    spill_dir : pathlib.Path, optional
        Where a deflated data set is inflated to (a temporary file, memory-mapped); in memory without.

    Returns
    -------
    InstanceHeader
        The validated header.

    Raises
    ------
    InvalidInstance
        With a reason that names attributes, never their values.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        with _inflated(data, max_inflated_bytes, spill_dir) as inflated:
            values = walk_dataset(inflated, implicit=False, little_endian=True)
    else:
        values = walk_dataset(
            data,
            implicit=transfer_syntax_uid == ImplicitVRLittleEndian,
            little_endian=transfer_syntax_uid != ExplicitVRBigEndian,
        )
    for tag in _NUMERIC_IMAGE_TAGS:
        raw = values.get(tag)
        if raw is not None and raw.strip(b"\x00 ") and _integer(raw) is None:
            raise InvalidInstance(f"{_NAMES[tag]} is not a number")
    header = InstanceHeader(
        sop_class_uid=_uid(values, SOP_CLASS_UID),
        sop_instance_uid=_uid(values, SOP_INSTANCE_UID),
        study_uid=_uid(values, STUDY_UID),
        series_uid=_uid(values, SERIES_UID),
        transfer_syntax_uid=transfer_syntax_uid,
        modality=_text(values.get(MODALITY), 16),
        body_part=_text(values.get(BODY_PART), 64),
        series_number=_integer(values.get(SERIES_NUMBER)),
        instance_number=_integer(values.get(INSTANCE_NUMBER)),
        patient_key=patient_key(values),
        accession_number=_identifier(values.get(ACCESSION_NUMBER), 16),
        patient_id=_identifier(values.get(PATIENT_ID), 64),
        issuer_of_patient_id=_identifier(values.get(ISSUER_OF_PATIENT_ID), 64),
    )
    if expected_sop_class_uid is not None and header.sop_class_uid != expected_sop_class_uid:
        raise SopClassMismatch("SOP Class UID differs from the C-STORE request")
    if expected_sop_instance_uid is not None and header.sop_instance_uid != expected_sop_instance_uid:
        raise SopClassMismatch("SOP Instance UID differs from the C-STORE request")
    return header


def _text(raw: bytes | None, limit: int) -> str | None:
    if not raw:
        return None
    text = raw.decode("ascii", "replace").strip(" \x00")
    return text[:limit] or None


def _identifier(raw: bytes | None, limit: int) -> str | None:
    """An identifier compared with an order's (UTF-8 when it decodes, else Latin-1; the character set is not read)."""
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = "".join(ch for ch in text if ch.isprintable()).strip(" \x00")
    return text[:limit] or None


def _integer(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    text = raw.decode("ascii", "replace").strip(" \x00").split("\\")[0]
    try:
        return int(text)
    except ValueError:
        return None


def _uid(values: dict[int, bytes], tag: int) -> str:
    raw = values.get(tag)
    if raw is None:
        raise InvalidInstance(f"{_NAMES[tag]} is missing")
    uid = raw.decode("ascii", "replace").strip(" \x00")
    if not is_valid_uid(uid):
        raise InvalidInstance(f"{_NAMES[tag]} is not a valid UID")
    return uid


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "  # UIDs and bytes pad with NUL, text (SH, AE) with space
    if vr == b"OB":
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str) -> bytes:
    """Encode the Part 10 preamble, prefix and file meta group for a data set.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        Media Storage SOP Class/Instance UIDs (validated UIDs).
    transfer_syntax_uid : str
        The data set's transfer syntax.
    source_ae : str
        The sender's AE title (Source Application Entity Title).

    Returns
    -------
    bytes
        ``128 zero bytes + b"DICM" + group 0002``, explicit VR little endian.
    """
    ae = source_ae.strip().encode("ascii", "replace")
    if len(ae) % 2:
        ae += b" "
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x0002, 0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x0002, 0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
            _element(0x0002, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x0002, 0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii")),
            _element(0x0002, 0x0016, b"AE", ae) if ae else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
