r"""The data of ``bench.priors``: one patient's prior multi-series chest CT in Orthanc, and his current CT.

The prior (:func:`prior_study`, 2024-03-01) is what a scanner and its console leave in a PACS: a localizer,
a thin axial series (``slices``), a 5 mm axial series (``thick``), a coronal and a sagittal reformat
(``reformats`` each, Image Type ``DERIVED\SECONDARY\REFORMATTED``) and a Basic Text SR report.  The
current study (:func:`current_study`, 2025-03-10) is one thin axial series of the same patient.  Every
instance is built in memory as a Part 10 file (16-bit CT pixels of a body ellipse with two lungs, ``size``
square), with UIDs fresh per run.

:class:`PriorPacs` is Orthanc with its DICOMweb plugin: our AE title is registered for C-FIND and C-GET,
and the prior is uploaded over its REST API (``POST /instances``) from a few threads.  It offers itself as
a DIMSE (C-GET) and a DICOMweb (WADO-RS) prior source.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.processes import HOST, ORTHANC, BenchError, ManagedProcess, free_port, port_open, wait_until
from integration.prior_sources import PriorSource

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PATIENT_ID, ISSUER, PATIENT_NAME = "BENCH-PRI-001", "BENCH-HOSP", "BENCH^PRIORS"
#: Our AE title (the settings' default): the calling AE of C-FIND and C-GET.
OUR_AE = "PACSVLM"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
DESCRIPTION = "CT CHEST WITH CONTRAST"
REPORT_TEXT = "Small left pleural effusion. No pneumothorax. No suspicious pulmonary nodule."


@dataclass(frozen=True)
class Sizes:
    """How big the studies are: slices per series and the image's side in pixels."""

    slices: int = 300
    thick: int = 60
    reformats: int = 300
    current: int = 300
    size: int = 256


@dataclass(frozen=True)
class Study:
    """A built study: its UID and Part 10 files (one per instance)."""

    uid: str
    files: tuple[bytes, ...]

    @property
    def bytes(self) -> int:
        """The size of all its files."""
        return sum(len(f) for f in self.files)


def _phantom(size: int, z: float, length: float) -> np.ndarray:
    """An axial slice in HU: a soft-tissue ellipse, two lungs that narrow towards the ends, the spine."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    image = np.full((size, size), -1000, np.int16)
    image[(x / 0.9) ** 2 + (y / 0.65) ** 2 <= 1] = 40
    lung = max(0.05, 0.35 * (1 - abs(2 * z / length - 1)))
    for centre in (-0.42, 0.42):
        image[((x - centre) / lung) ** 2 + (y / 0.45) ** 2 <= 1] = -850
    image[(x / 0.12) ** 2 + ((y + 0.3) / 0.12) ** 2 <= 1] = 700
    return image


def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _header(study: Dataset, series_uid: str, number: int, modality: str, description: str, index: int) -> Dataset:
    ds = Dataset()
    ds.update(study)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, number, modality
    ds.SeriesDescription, ds.InstanceNumber, ds.BodyPartExamined = description, index, "CHEST"
    ds.ContentDate, ds.ContentTime = study.StudyDate, "101500"
    return ds


def _study(date: str, accession: str) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = PATIENT_NAME, PATIENT_ID, ISSUER
    ds.PatientBirthDate, ds.PatientSex = "19600412", "F"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = generate_uid(), date, "101500"
    ds.StudyDescription, ds.AccessionNumber, ds.StudyID = DESCRIPTION, accession, "1"
    ds.ReferringPhysicianName, ds.Manufacturer = "", "pacs-vlm bench"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = generate_uid(), ""
    return ds


def _ct_series(
    study: Dataset, number: int, description: str, count: int, size: int, *, plane: str = "axial",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> list[bytes]:  # fmt: skip
    """One CT series of ``count`` images; ``plane`` sets the orientation (the pixels are the same phantom)."""
    series_uid, spacing = generate_uid(), 300.0 / max(count, 1)
    orientation = {"axial": [1, 0, 0, 0, 1, 0], "coronal": [1, 0, 0, 0, 0, -1], "sagittal": [0, 1, 0, 0, 0, -1]}
    files = []
    for i in range(count):
        ds = _header(study, series_uid, number, "CT", description, i + 1)
        ds.SOPClassUID, ds.ImageType = CT_IMAGE, list(image_type)
        ds.ImageOrientationPatient = orientation[plane]
        position = -(i * spacing)
        ds.ImagePositionPatient = {
            "axial": [-160.0, -160.0, position], "coronal": [-160.0, position, 0.0], "sagittal": [position, -160.0, 0.0]
        }[plane]  # fmt: skip
        ds.SliceLocation, ds.SliceThickness, ds.PixelSpacing = position, spacing, [320 / size, 320 / size]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth, ds.KVP, ds.AcquisitionNumber = 40, 400, 120, 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = _phantom(size, i * spacing, 300.0).astype("<i2").tobytes()
        files.append(_part10(ds))
    return files


def _code(value: str, scheme: str, meaning: str) -> DicomSequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return DicomSequence([item])


def _report(study: Dataset) -> bytes:
    """A Basic Text SR: a Findings container with one TEXT item."""
    ds = _header(study, generate_uid(), 1001, "SR", "Report", 1)
    ds.SOPClassUID, ds.ValueType, ds.ContinuityOfContent = BASIC_TEXT_SR, "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = _code("18748-4", "LN", "Diagnostic Imaging Report")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence, ds.InstanceCreationDate = DicomSequence(), study.StudyDate
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", REPORT_TEXT
    text.ConceptNameCodeSequence = _code("121071", "DCM", "Finding")
    section = Dataset()
    section.RelationshipType, section.ValueType, section.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
    section.ConceptNameCodeSequence, section.ContentSequence = _code("121070", "DCM", "Findings"), DicomSequence([text])
    ds.ContentSequence = DicomSequence([section])
    return _part10(ds)


def prior_study(sizes: Sizes) -> Study:
    """The prior multi-series chest CT of the module's docstring."""
    study, size, reformat = _study("20240301", "BENCH-PRIOR"), sizes.size, ("DERIVED", "SECONDARY", "REFORMATTED")
    files = [
        *_ct_series(study, 1, "Topogram", 1, size, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        *_ct_series(study, 2, "Chest 1mm", sizes.slices, size),
        *_ct_series(study, 3, "Chest 5mm", sizes.thick, size),
        *_ct_series(study, 4, "Chest COR MPR", sizes.reformats, size, plane="coronal", image_type=reformat),
        *_ct_series(study, 5, "Chest SAG MPR", sizes.reformats, size, plane="sagittal", image_type=reformat),
        _report(study),
    ]
    return Study(study.StudyInstanceUID, tuple(files))


def current_study(sizes: Sizes) -> Study:
    """The patient's current chest CT: one thin axial series of ``sizes.current`` slices."""
    study = _study("20250310", "BENCH-CURRENT")
    return Study(study.StudyInstanceUID, tuple(_ct_series(study, 2, "Chest 1mm", sizes.current, sizes.size)))


class PriorPacs:
    """Orthanc with its DICOMweb plugin in ``workdir``; our AE title may C-FIND and C-GET."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), "PRIORPACS"
        storage = workdir / "storage"
        modality = {"AET": OUR_AE, "Host": HOST, "Port": free_port(), "AllowFind": True, "AllowGet": True}
        config = {
            "Name": "pacs-vlm-bench-priors",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"pacsvlm": modality},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SyncStorageArea": False,
            "StableAge": 3600,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.server = ManagedProcess(
            name="Orthanc",
            command=[ORTHANC, str(workdir / "orthanc.json")],
            env={**os.environ, "TCP_NODELAY": "1"},
            log_path=workdir / "orthanc.log",
        )

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{HOST}:{self.http_port}"

    def start(self) -> PriorPacs:
        """Start Orthanc and wait for its DICOM port and REST API."""
        if not Path(DICOMWEB_PLUGIN).is_file():
            raise BenchError(f"Orthanc's DICOMweb plugin is not installed: {DICOMWEB_PLUGIN}")
        self.server.start()
        wait_until(lambda: port_open(self.dicom_port), "open DICOM port", self.server)
        wait_until(self._answers, "answer to GET /system", self.server)
        return self

    def stop(self) -> None:
        """Stop Orthanc (its storage goes with the caller's folder)."""
        self.server.stop()

    def _answers(self) -> bool:
        try:
            self.request("GET", "/system")
        except (OSError, BenchError):
            return False
        return True

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """Call the REST API; return the decoded JSON answer."""
        headers = {"Content-Type": "application/dicom"} if body is not None else {}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as response:
                answer = response.read()
        except urllib.error.HTTPError as exc:
            raise BenchError(f"Orthanc {method} {path}: HTTP {exc.code}\n{self.server.log_tail()}") from exc
        return json.loads(answer) if answer else None

    def upload(self, files: Sequence[bytes], advance: Callable[[], None], threads: int = 4) -> None:
        """POST every file to ``/instances`` from ``threads`` threads; ``advance`` is called per file."""

        def one(data: bytes) -> None:
            answer = self.request("POST", "/instances", data)
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise BenchError(f"Orthanc refused an instance: {answer}")
            advance()

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, files))

    def instances(self) -> int:
        """How many instances Orthanc holds."""
        return int(self.request("GET", "/statistics")["CountInstances"])

    def sources(self) -> dict[str, PriorSource]:
        """The PACS as prior sources, by retrieval: ``C-GET`` (DIMSE) and ``WADO-RS`` (DICOMweb)."""
        return {
            "C-GET": PriorSource(
                name="pacs", kind="dimse", ae_title=self.aet, host=HOST, port=self.dicom_port, timeout=60
            ),
            "WADO-RS": PriorSource(name="pacs", kind="dicomweb", url=f"{self.url}/dicom-web", timeout=60),
        }
