"""read_header / walk_dataset against pydicom's own test files and hand-built hostile data sets."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from integration.intake import header
from integration.intake.header import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    InstanceHeader,
    SopClassMismatch,
    file_meta_bytes,
    is_valid_uid,
    read_header,
)
from integration.intake.structure import SOP_INSTANCE_UID, STUDY_UID, InvalidInstance, walk_dataset

#: pydicom warns about the invalid values these tests write on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
ALL_TEST_FILES = sorted(TEST_FILES.rglob("*.dcm"))
#: pydicom reads these (leniently) but they are broken: an archive must refuse them.
BROKEN = {
    "badVR.dcm": "NumberOfFrames is '1A'",
    "MR_truncated.dcm": "pixel data cut short",
    "rtplan_truncated.dcm": "truncated inside a sequence",
    "SC_rgb_jpeg.dcm": "garbled element structure",
    "no_meta.dcm": "no SOP Class UID where expected; truncated when read as implicit VR",
}
UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_TS_BY_ENCODING = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


def test_the_pydicom_test_files_are_there() -> None:
    names = {path.name for path in ALL_TEST_FILES}
    assert len(ALL_TEST_FILES) > 40
    assert set(BROKEN) <= names


# ---------------------------------------------------------------- helpers


def split_part10(path: Path) -> tuple[bytes, str | None]:
    """Return the data set bytes of a file (after preamble and file meta) and its transfer syntax."""
    with warnings.catch_warnings(), path.open("rb") as fp:
        warnings.simplefilter("ignore")
        read_preamble(fp, force=True)
        meta = _read_file_meta_info(fp)
        offset = fp.tell()
    return path.read_bytes()[offset:], meta.get("TransferSyntaxUID")


def read_fully(path: Path) -> Dataset | None:
    """pydicom's reading of a file, every value decoded; None when pydicom cannot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                ds = pydicom.dcmread(path)
            except pydicom.errors.InvalidDicomError:  # no file meta: a bare data set
                ds = pydicom.dcmread(path, force=True)
            for element in ds.iterall():
                _ = element.value
        except Exception:
            return None
    return ds


def encode(ds: Dataset, *, implicit: bool = False, little_endian: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little_endian
    write_dataset(fp, ds)
    return fp.getvalue()


def syntax(implicit: bool, little_endian: bool = True) -> str:
    return _TS_BY_ENCODING[(implicit, little_endian)]


@pytest.fixture
def no_write_validation() -> Iterator[None]:
    """Let pydicom write values it considers invalid (we want to send hostile data)."""
    with pydicom_config.disable_value_validation():
        yield


def minimal_dataset(**overrides: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.InstanceNumber = 7
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


# ------------------------------------------------------ pydicom's test files


@pytest.mark.parametrize("path", ALL_TEST_FILES, ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_pydicom_test_file(path: Path) -> None:
    data, ts = split_part10(path)
    ds = read_fully(path)
    if ts is None and ds is not None:  # no file meta (or none naming the syntax): pydicom's guess
        ts = _TS_BY_ENCODING.get(ds.original_encoding)  # type: ignore[arg-type]
    if ts is None:
        pytest.skip("neither the file nor pydicom tells the transfer syntax")

    if path.name in BROKEN:
        with pytest.raises(InvalidInstance):
            read_header(data, ts)
        return
    if ds is None:
        with pytest.raises(InvalidInstance):
            read_header(data, ts)
        return
    if not all(ds.get(keyword) for keyword in UID_KEYWORDS):
        with pytest.raises(InvalidInstance):
            read_header(data, ts)
        return

    got = read_header(data, ts)
    assert got.transfer_syntax_uid == ts
    assert got.sop_class_uid == ds.SOPClassUID
    assert got.sop_instance_uid == ds.SOPInstanceUID
    assert got.study_uid == ds.StudyInstanceUID
    assert got.series_uid == ds.SeriesInstanceUID
    modality = str(ds.get("Modality") or "").strip() or None
    assert got.modality == modality
    for field, keyword in (("series_number", "SeriesNumber"), ("instance_number", "InstanceNumber")):
        value = ds.get(keyword)
        assert getattr(got, field) == (int(value) if value not in (None, "") else None)


def test_pydicom_accepts_most_files_so_the_test_above_is_not_vacuous() -> None:
    accepted = []
    for path in ALL_TEST_FILES:
        data, ts = split_part10(path)
        if ts is None or path.name in BROKEN:
            continue
        try:
            read_header(data, ts)
        except InvalidInstance:
            continue
        accepted.append(path.name)
    assert {"CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"} <= set(accepted)
    assert len(accepted) >= 50


def test_read_header_takes_a_memoryview() -> None:
    data, ts = split_part10(TEST_FILES / "CT_small.dcm")
    assert read_header(memoryview(data), ts) == read_header(data, ts)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtplan.dcm"]
)
def test_truncated_at_every_997th_byte_is_refused(name: str) -> None:
    data, ts = split_part10(TEST_FILES / name)
    assert ts is not None
    read_header(data, ts)  # whole: accepted
    cuts = list(range(0, len(data), 997))
    if ts != DeflatedExplicitVRLittleEndian:  # (a deflated file's last byte is padding after the stream)
        cuts.append(len(data) - 1)
    for cut in cuts:
        with pytest.raises(InvalidInstance):
            read_header(data[:cut], ts)


# ------------------------------------------------------------ UIDs as paths

HOSTILE_UIDS = ["../../etc", "1.2/3", "1.2.3\x00/x", "1." + "2" * 63, "..", "1.2.3\\4.5", "1.2.a", "1.2.3 4"]


def test_a_valid_minimal_dataset_is_accepted() -> None:
    ds = minimal_dataset()
    for implicit in (False, True):
        got = read_header(encode(ds, implicit=implicit), syntax(implicit))
        assert got == InstanceHeader(
            sop_class_uid=CTImageStorage,
            sop_instance_uid=ds.SOPInstanceUID,
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            transfer_syntax_uid=syntax(implicit),
            modality="CT",
            series_number=3,
            instance_number=7,
            patient_key=header.patient_key({}),  # no patient module: the identity of empty values
        )


def test_the_patient_key_ignores_encoding_differences_but_not_another_patient() -> None:
    identity = {
        "PatientID": "MRN1",
        "IssuerOfPatientID": "NORTH",
        "PatientName": "DOE^JANE",
        "PatientBirthDate": "19700101",
    }

    def key(implicit: bool = False, **changes: str) -> str | None:
        ds = minimal_dataset(**{**identity, **changes})
        return read_header(encode(ds, implicit=implicit), syntax(implicit)).patient_key

    reference = key()
    assert reference is not None and len(reference) == 64
    assert key(implicit=True) == reference
    assert key(PatientName="doe^jane^^") == key(PatientName="DOE^JANE ") == reference
    for attribute, other in (
        ("PatientID", "MRN2"),
        ("IssuerOfPatientID", "SOUTH"),
        ("PatientName", "DOE^JOHN"),
        ("PatientBirthDate", "19700102"),
    ):
        assert key(**{attribute: other}) != reference, attribute
    assert "MRN1" not in repr(read_header(encode(minimal_dataset(**identity), implicit=False), syntax(False)))


def test_the_order_matching_values_are_read_but_never_shown() -> None:
    ds = minimal_dataset(AccessionNumber="ACC7 ", PatientID="MRN\u00e91", IssuerOfPatientID="NORTH")
    ds.SpecificCharacterSet = "ISO_IR 100"
    got = read_header(encode(ds, implicit=False), syntax(False))
    assert (got.accession_number, got.patient_id, got.issuer_of_patient_id) == ("ACC7", "MRN\u00e91", "NORTH")
    assert "ACC7" not in repr(got) and "NORTH" not in repr(got)
    bare = read_header(encode(minimal_dataset(), implicit=True), syntax(True))
    assert (bare.accession_number, bare.patient_id, bare.issuer_of_patient_id) == (None, None, None)


@pytest.mark.usefixtures("no_write_validation")
@pytest.mark.parametrize("keyword", UID_KEYWORDS)
@pytest.mark.parametrize("bad", HOSTILE_UIDS, ids=repr)
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_uids_that_could_be_paths_are_refused(keyword: str, bad: str, implicit: bool) -> None:
    ds = minimal_dataset(**{keyword: bad})
    data = encode(ds, implicit=implicit)
    assert bad.encode("latin-1") in data
    with pytest.raises(InvalidInstance, match=f"{keyword} is not a valid UID") as caught:
        read_header(data, syntax(implicit))
    assert bad.strip() not in str(caught.value)  # the reason names the attribute, never its value


@pytest.mark.parametrize("keyword", UID_KEYWORDS)
def test_uid_with_a_trailing_newline_is_refused(keyword: str) -> None:
    # pydicom strips the newline when writing, so the value is patched into the encoded bytes
    data = encode(minimal_dataset(**{keyword: "1.2.3.4"}))
    assert data.count(b"1.2.3.4\x00") == 1
    data = data.replace(b"1.2.3.4\x00", b"1.2.345\n")
    with pytest.raises(InvalidInstance, match=f"{keyword} is not a valid UID"):
        read_header(data, ExplicitVRLittleEndian)


@pytest.mark.parametrize("keyword", UID_KEYWORDS)
def test_missing_uid_is_refused(keyword: str) -> None:
    ds = minimal_dataset()
    delattr(ds, keyword)
    with pytest.raises(InvalidInstance, match=f"{keyword} is missing"):
        read_header(encode(ds), ExplicitVRLittleEndian)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("2.25.219395315146049302813522519426128765071", True),
        ("1.02.3", True),  # leading zeros are tolerated
        ("1." + "2" * 62, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65 characters
        ("", False),
        (".", False),
        ("..", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.2/3", False),
        ("../../etc", False),
        ("1.2.3\x00", False),
        pytest.param("1.2.3\n", False),
        (" 1.2.3", False),
        ("1.2.a", False),
        ("\uff11.\uff12", False),  # full-width digits
        (None, False),
        (123, False),
        (b"1.2.3", False),
    ],
)
def test_is_valid_uid(value: object, valid: bool) -> None:
    assert is_valid_uid(value) is valid


# --------------------------------------------------------- C-STORE agreement


def test_sop_uids_must_match_the_c_store_request() -> None:
    ds = minimal_dataset()
    data = encode(ds)
    read_header(
        data, ExplicitVRLittleEndian, expected_sop_class_uid=CTImageStorage, expected_sop_instance_uid=ds.SOPInstanceUID
    )
    with pytest.raises(SopClassMismatch, match="SOP Instance UID"):
        read_header(data, ExplicitVRLittleEndian, expected_sop_instance_uid=generate_uid())
    with pytest.raises(SopClassMismatch, match="SOP Class UID"):
        read_header(data, ExplicitVRLittleEndian, expected_sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    assert issubclass(SopClassMismatch, InvalidInstance)


# ---------------------------------------------------------------- file meta


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEG2000.dcm"]
)
def test_file_meta_bytes_make_a_part10_file_pydicom_reads(name: str, tmp_path: Path) -> None:
    source = TEST_FILES / name
    data, ts = split_part10(source)
    assert ts is not None
    found = read_header(data, ts)
    meta = file_meta_bytes(found.sop_class_uid, found.sop_instance_uid, ts, "CT1")
    assert meta[:132] == b"\x00" * 128 + b"DICM"
    target = tmp_path / "out.dcm"
    target.write_bytes(meta + data)

    written = pydicom.dcmread(target)  # not forced: a proper Part 10 file
    fm = written.file_meta
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == found.sop_class_uid
    assert fm.MediaStorageSOPInstanceUID == found.sop_instance_uid
    assert fm.TransferSyntaxUID == ts
    assert fm.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert fm.ImplementationVersionName == IMPLEMENTATION_VERSION
    assert fm.SourceApplicationEntityTitle == "CT1"
    original = pydicom.dcmread(source)
    assert written == original  # the data set is untouched
    assert written.SOPInstanceUID == found.sop_instance_uid


def test_file_meta_without_source_ae(tmp_path: Path) -> None:
    ds = minimal_dataset()
    target = tmp_path / "x.dcm"
    target.write_bytes(file_meta_bytes(CTImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian, "") + encode(ds))
    fm = pydicom.dcmread(target).file_meta
    assert "SourceApplicationEntityTitle" not in fm
    assert fm.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


# ---------------------------------------------------------------- nesting


def nested(depth: int, *, undefined_length: bool) -> Dataset:
    top = minimal_dataset()
    current = top
    for level in range(depth):
        item = Dataset()
        item.CodeValue = str(level)
        current.ContentSequence = Sequence([item])
        current["ContentSequence"].is_undefined_length = undefined_length
        current = item
    return top


@pytest.mark.parametrize(
    ("implicit", "undefined_length"),
    [
        (False, False),
        (False, True),
        (True, True),
        pytest.param(True, False),
    ],
    ids=["explicit-defined", "explicit-undefined", "implicit-undefined", "implicit-defined"],
)
def test_deep_nesting_is_refused(implicit: bool, undefined_length: bool) -> None:
    ts = syntax(implicit)
    read_header(encode(nested(32, undefined_length=undefined_length), implicit=implicit), ts)  # the limit: accepted
    for depth in (33, 40, 200):
        data = encode(nested(depth, undefined_length=undefined_length), implicit=implicit)
        with pytest.raises(InvalidInstance, match="nested too deeply"):
            read_header(data, ts)


@pytest.mark.parametrize("implicit", [False, True])
def test_walk_takes_only_top_level_values(implicit: bool) -> None:
    ds = minimal_dataset()
    item = Dataset()
    item.SOPInstanceUID = "1.2.3.999"  # the same tag inside a sequence item must not leak out
    item.StudyInstanceUID = "1.2.3.998"
    ds.ReferencedImageSequence = Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    values = walk_dataset(encode(ds, implicit=implicit), implicit=implicit, little_endian=True)
    assert values[SOP_INSTANCE_UID].rstrip(b"\x00") == ds.SOPInstanceUID.encode()
    assert values[STUDY_UID].rstrip(b"\x00") == ds.StudyInstanceUID.encode()


def test_walk_big_endian_and_refusals() -> None:
    ds = minimal_dataset()
    values = walk_dataset(encode(ds, little_endian=False), implicit=False, little_endian=False)
    assert values[SOP_INSTANCE_UID].rstrip(b"\x00") == ds.SOPInstanceUID.encode()
    with pytest.raises(InvalidInstance, match="empty"):
        walk_dataset(b"", implicit=False, little_endian=True)
    # an explicit-VR element with a VR that is not a DICOM VR
    with pytest.raises(InvalidInstance, match="unknown VR"):
        walk_dataset(b"\x08\x00\x16\x00ZZ\x02\x001\x00", implicit=False, little_endian=True)
    # a stray item delimiter at the top level
    with pytest.raises(InvalidInstance):
        walk_dataset(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", implicit=True, little_endian=True)
    # a sequence of undefined length that is never delimited
    undelimited = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
    with pytest.raises(InvalidInstance):
        walk_dataset(undelimited, implicit=False, little_endian=True)


def test_number_of_frames_must_be_a_number() -> None:
    ds = minimal_dataset()
    data = encode(ds)  # its last element is InstanceNumber (0020,0013); (0028,0008) may follow
    bad = b"\x28\x00\x08\x00IS\x02\x001A"
    with pytest.raises(InvalidInstance, match="NumberOfFrames"):
        read_header(data + bad, ExplicitVRLittleEndian)
    good = b"\x28\x00\x08\x00IS\x02\x002 "
    assert read_header(data + good, ExplicitVRLittleEndian).sop_instance_uid == ds.SOPInstanceUID
