"""DICOM files for the imaging tests, written to a test's tmp_path: series of tiny images with chosen attributes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from integration.imaging.selection import ModelImage

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-73519"


def dataset(
    series_uid: str,
    *,
    sop_class: str = CTImageStorage,
    modality: str = "CT",
    position: Sequence[float] | None = None,
    orientation: Sequence[float] | None = AXIAL,
    number: int | None = None,
    value: int = 0,
    shape: tuple[int, ...] = (8, 8),
    series_number: int = 1,
    pixels: bool = True,
    **attributes: object,
) -> Dataset:
    """An instance of ``series_uid``: a uint16 image filled with ``value`` (frames first in ``shape``)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19600229"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if number is not None:
        ds.InstanceNumber = number
    if position is not None:
        ds.ImagePositionPatient = list(position)
    if orientation is not None and position is not None:
        ds.ImageOrientationPatient = list(orientation)
    if pixels:
        array = np.full(shape, value, dtype=np.uint16)
        if len(shape) == 3:
            ds.NumberOfFrames = shape[0]
        ds.Rows, ds.Columns = shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = array.tobytes()
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    for keyword, item in attributes.items():
        setattr(ds, keyword, item)
    return ds


def write(folder: Path, datasets: Sequence[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def axial_series(count: int, **attributes: Any) -> list[Dataset]:
    uid = generate_uid()
    return [dataset(uid, position=[0.0, 0.0, float(z)], number=z + 1, **attributes) for z in range(count)]


def uids(images: Sequence[ModelImage]) -> list[list[str]]:
    return [[e.sop_instance_uid for e in image.evidence] for image in images]
