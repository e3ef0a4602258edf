"""Sample studies: pydicom's bundled test files and a generated CT series.

The demo sends these, the tests send them with dcmtk and the ingest benchmark
uses :func:`write_ct_series` for its 300-slice series.  Nothing here reads a
network; every file comes from the pydicom wheel or is generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: pydicom test files that form the bundled sample studies (one study each).
BUNDLED_SAMPLES: tuple[str, ...] = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "US1_J2KR.dcm",
    "image_dfl.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose.dcm",
    "examples_ybr_color.dcm",
    "rtdose_1frame.dcm",
)

#: pydicom test files that are broken and must be refused.
BROKEN_SAMPLES: tuple[str, ...] = ("badVR.dcm", "MR_truncated.dcm", "no_meta.dcm")


def pydicom_test_file(name: str) -> Path:
    """Return the path of one of the test files inside the pydicom wheel.

    Parameters
    ----------
    name : str
        File name, for example ``"CT_small.dcm"``.

    Returns
    -------
    pathlib.Path
        The file's path.

    Raises
    ------
    FileNotFoundError
        If the installed pydicom does not ship that file.
    """
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.is_file():
        raise FileNotFoundError(f"pydicom does not ship the test file {name!r}")
    return path


def bundled_sample_paths() -> list[Path]:
    """Return the bundled sample files that the installed pydicom ships.

    Returns
    -------
    list of pathlib.Path
        Paths of the sample files, in :data:`BUNDLED_SAMPLES` order.
    """
    paths = []
    for name in BUNDLED_SAMPLES:
        try:
            paths.append(pydicom_test_file(name))
        except FileNotFoundError:
            continue
    return paths


def write_sample_studies(directory: Path) -> list[Path]:
    """Copy the bundled samples into ``directory`` with fresh SOP Instance UIDs.

    pydicom's test files reuse SOP Instance UIDs across files (the RLE and
    JPEG 2000 versions of MR_small, say); an archive keeps only the first copy
    of a SOP instance, so each copy gets its own UID.  Study and series UIDs,
    transfer syntaxes and pixel data are kept as they are.

    Parameters
    ----------
    directory : pathlib.Path
        Target folder; created when missing.

    Returns
    -------
    list of pathlib.Path
        The written files.
    """
    import pydicom

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source in bundled_sample_paths():
        ds = pydicom.dcmread(source)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        target = directory / source.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def ct_series(
    n_slices: int = 300,
    rows: int = 512,
    columns: int = 512,
    *,
    study_uid: str | None = None,
    seed: int = 0,
) -> Iterator[Dataset]:
    """Generate an axial CT series of 16-bit slices (one study, one series).

    Parameters
    ----------
    n_slices : int
        Number of slices (instances).
    rows, columns : int
        Matrix size of each slice.
    study_uid : str, optional
        Study Instance UID to use; a new one is generated when omitted.
    seed : int
        Seed for the noise in the pixel data.

    Yields
    ------
    pydicom.dataset.Dataset
        One dataset per slice, with file meta (explicit VR little endian).
    """
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    yy, xx = np.mgrid[0:rows, 0:columns]
    body = ((yy - rows / 2) ** 2 / (rows * 0.42) ** 2 + (xx - columns / 2) ** 2 / (columns * 0.45) ** 2) < 1
    base = np.where(body, 1040, 24).astype(np.int16)
    for index in range(n_slices):
        noise = rng.integers(-20, 20, size=(rows, columns), dtype=np.int16)
        pixels = (base + noise).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "Synthetic^Chest"
        ds.PatientID = "SYN-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20261123"
        ds.StudyTime = "120000"
        ds.AccessionNumber = "SYN1"
        ds.StudyID = "1"
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Chest 1.0 mm"
        ds.InstanceNumber = index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-250.0, -250.0, -float(index)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceThickness = 1.0
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = -600
        ds.WindowWidth = 1600
        ds.PixelData = pixels.tobytes()
        yield ds


def write_ct_series(directory: Path, n_slices: int = 300, **kwargs: object) -> list[Path]:
    """Write a generated CT series as DICOM files.

    Parameters
    ----------
    directory : pathlib.Path
        Target folder; created when missing.
    n_slices : int
        Number of slices.
    **kwargs
        Passed to :func:`ct_series`.

    Returns
    -------
    list of pathlib.Path
        The written files, in slice order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(ct_series(n_slices, **kwargs)):  # type: ignore[arg-type]
        path = directory / f"CT{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
