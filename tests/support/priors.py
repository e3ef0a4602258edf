"""A patient with prior studies in a PACS: the data set, its current study, and Orthanc holding the priors.

The patient ``PRI-001`` of issuer ``HOSP-A`` (``PRIOR^PATIENT``) has, in the PACS (:func:`build_priors`):

- a chest CT (:attr:`PriorDataSet.ct`, 2024-03-01) of five series: a localizer (1 instance, ``LOCALIZER``
  image type), a thin axial series (20 slices, 2.5 mm apart, proper position/orientation), a thick axial
  series (5 slices, 10 mm), a dose screen (a secondary capture, ``DERIVED\\SECONDARY``) and a Basic Text SR
  report whose text is :data:`PRIOR_REPORT_TEXT`;
- a chest radiograph (:attr:`PriorDataSet.radiograph`, CR, 2024-11-15, one PA image);
- an old chest CT (:attr:`PriorDataSet.old_ct`, 2018-01-10, 3 slices: beyond a five-year look-back).

Studies that must never be taken for his, both more recent than his CT:

- :attr:`PriorDataSet.other_issuer`: Patient ID ``PRI-001`` under issuer ``HOSP-B`` (another person), chest CT
  2024-09-01;
- :attr:`PriorDataSet.same_name`: ``PRIOR^PATIENT`` with Patient ID ``PRI-002``, chest CT 2024-12-01.

:func:`build_current_study` makes his current chest CT (2025-03-10): a localizer and a 20-slice axial series.
Images are 64x64 (a body ellipse with lungs, in HU) so that everything stays fast.

:func:`prior_pacs` is a session-scoped fixture: Orthanc with its DICOMweb plugin holding all the above,
our AE title registered (C-FIND, C-GET; C-MOVE after :meth:`PriorPacs.register` names the port).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from integration.prior_sources import PriorSource
from tests.support.orthanc import DICOMWEB_PLUGIN, OrthancServer

PATIENT_ID = "PRI-001"
ISSUER = "HOSP-A"
OTHER_ISSUER = "HOSP-B"
PATIENT_NAME = "PRIOR^PATIENT"
SAME_NAME_PATIENT_ID = "PRI-002"
#: Our AE title as the tests' settings have it (the default): registered at the PACS by :func:`prior_pacs`.
OUR_AE = "PACSVLM"
PRIOR_REPORT_TEXT = "No pneumothorax. Small left pleural effusion."
PRIOR_IMPRESSION = "Small left pleural effusion, no pneumothorax."

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True)
class SeriesSpec:
    """One series of a built study (what an archive's series query should answer)."""

    uid: str
    number: int
    modality: str
    description: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    instance_uids: tuple[str, ...]
    body_part: str | None = "CHEST"

    @property
    def instances(self) -> int:
        return len(self.instance_uids)


@dataclass(frozen=True)
class StudySpec:
    """One built study and its files."""

    uid: str
    patient_id: str
    issuer: str
    patient_name: str
    date: str
    description: str
    accession: str
    series: tuple[SeriesSpec, ...]
    files: tuple[Path, ...] = field(repr=False, default=())

    @property
    def modalities(self) -> set[str]:
        return {s.modality for s in self.series}

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)

    def series_named(self, description: str) -> SeriesSpec:
        """The series whose description is ``description`` (exactly)."""
        return next(s for s in self.series if s.description == description)


@dataclass(frozen=True)
class PriorDataSet:
    """Everything :func:`build_priors` wrote (see the module's docstring)."""

    ct: StudySpec
    radiograph: StudySpec
    old_ct: StudySpec
    other_issuer: StudySpec
    same_name: StudySpec

    @property
    def studies(self) -> tuple[StudySpec, ...]:
        return (self.ct, self.radiograph, self.old_ct, self.other_issuer, self.same_name)

    @property
    def patients_studies(self) -> tuple[StudySpec, ...]:
        """The studies of ``PRI-001``/``HOSP-A``: the only ones a search for him may use."""
        return (self.ct, self.radiograph, self.old_ct)


def _uid(*parts: object) -> str:
    """A UID that the same parts always give (the data set is the same in every run)."""
    return generate_uid(entropy_srcs=["pacs-vlm-priors", *map(str, parts)])


def _phantom(z: float, size: int = 64) -> np.ndarray:
    """A chest-like slice in HU: air, a soft-tissue body ellipse, two lungs that shrink towards the ends."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    image = np.full((size, size), -1000, np.int16)
    image[(x / 0.9) ** 2 + (y / 0.65) ** 2 <= 1] = 40
    lung = max(0.05, 0.35 * (1 - abs(z) / 120))
    for centre in (-0.42, 0.42):
        image[((x - centre) / lung) ** 2 + (y / 0.45) ** 2 <= 1] = -850
    image[(x / 0.12) ** 2 + ((y + 0.3) / 0.12) ** 2 <= 1] = 700  # the spine
    return image


def _base(study: StudySpec, series: SeriesSpec, number: int, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = series.sop_class_uid, sop_uid
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = study.patient_name, study.patient_id, study.issuer
    ds.PatientBirthDate, ds.PatientSex = "19600412", "F"
    ds.PatientAge = f"{int(study.date[:4]) - 1960 - (1 if study.date[4:] < '0412' else 0):03d}Y"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study.uid, study.date, "101500"
    ds.StudyDescription, ds.AccessionNumber, ds.StudyID = study.description, study.accession, "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series.uid, series.number, series.modality
    ds.SeriesDescription, ds.InstanceNumber = series.description, number
    if series.body_part:
        ds.BodyPartExamined = series.body_part
    ds.Manufacturer, ds.InstitutionName = "pacs-vlm tests", "Test Hospital"
    ds.ContentDate, ds.ContentTime = study.date, "101500"
    return ds


def _pixels(ds: Dataset, image: np.ndarray, *, signed: bool) -> None:
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if signed:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = image.astype("<i2").tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = image.astype(np.uint8).tobytes()


def _image(study: StudySpec, series: SeriesSpec, number: int, sop_uid: str, z: float, thickness: float) -> Dataset:
    ds = _base(study, series, number, sop_uid)
    ds.ImageType = list(series.image_type)
    ds.FrameOfReferenceUID = _uid(study.uid, "frame")
    ds.PositionReferenceIndicator = ""
    if series.modality == "CR":
        ds.ViewPosition, ds.PatientOrientation = "PA", ["L", "F"]
        ds.PixelSpacing = [0.5, 0.5]
        _pixels(ds, np.clip(_phantom(0.0) + 1000, 0, 4095).astype(np.int16), signed=True)
        return ds
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-160.0, -160.0, z]
    ds.SliceLocation, ds.SliceThickness, ds.PixelSpacing = z, thickness, [5.0, 5.0]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.KVP, ds.AcquisitionNumber = 120, 1
    _pixels(ds, _phantom(z), signed=True)
    return ds


def _secondary_capture(study: StudySpec, series: SeriesSpec, sop_uid: str) -> Dataset:
    ds = _base(study, series, 1, sop_uid)
    ds.ImageType, ds.ConversionType = list(series.image_type), "WSD"
    image = np.zeros((64, 64), np.uint8)
    image[8:56:6, 4:60] = 255  # lines of a dose table
    _pixels(ds, image, signed=False)
    return ds


def _code(value: str, scheme: str, meaning: str) -> DicomSequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return DicomSequence([item])


def _report(study: StudySpec, series: SeriesSpec, sop_uid: str) -> Dataset:
    """A Basic Text SR (TID 2000 shape): Findings and Impressions containers of TEXT items."""
    ds = _base(study, series, 1, sop_uid)
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = _code("18748-4", "LN", "Diagnostic Imaging Report")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    ds.InstanceCreationDate = study.date
    sections = []
    for code, meaning, text in (
        ("121070", "Findings", PRIOR_REPORT_TEXT),
        ("121072", "Impressions", PRIOR_IMPRESSION),
    ):
        entry = Dataset()
        entry.RelationshipType, entry.ValueType, entry.TextValue = "CONTAINS", "TEXT", text
        entry.ConceptNameCodeSequence = _code("121071" if code == "121070" else "121073", "DCM", meaning[:-1])
        section = Dataset()
        section.RelationshipType, section.ValueType, section.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
        section.ConceptNameCodeSequence = _code(code, "DCM", meaning)
        section.ContentSequence = DicomSequence([entry])
        sections.append(section)
    ds.ContentSequence = DicomSequence(sections)
    return ds


def _write(ds: Dataset, folder: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


#: (description, number, modality, SOP class, image type, slices, spacing) of each kind of series.
_SERIES_KINDS: dict[str, tuple[str, int, str, str, tuple[str, ...], int, float]] = {
    "localizer": ("Topogram", 1, "CT", CT_IMAGE_STORAGE, ("ORIGINAL", "PRIMARY", "LOCALIZER"), 1, 0.0),
    "thin": ("Chest 2.5mm", 2, "CT", CT_IMAGE_STORAGE, ("ORIGINAL", "PRIMARY", "AXIAL"), 20, 2.5),
    "thick": ("Chest 10mm", 3, "CT", CT_IMAGE_STORAGE, ("ORIGINAL", "PRIMARY", "AXIAL"), 5, 10.0),
    "dose": ("Dose Report", 900, "CT", SECONDARY_CAPTURE, ("DERIVED", "SECONDARY", "OTHER"), 1, 0.0),
    "report": ("Report", 1001, "SR", BASIC_TEXT_SR, (), 1, 0.0),
    "radiograph": ("Chest PA", 1, "CR", CR_IMAGE_STORAGE, ("ORIGINAL", "PRIMARY"), 1, 0.0),
}


def build_study(
    folder: Path,
    key: str,
    *,
    patient_id: str,
    issuer: str,
    date: str,
    description: str,
    kinds: Sequence[str],
    patient_name: str = PATIENT_NAME,
    slices: int | None = None,
) -> StudySpec:
    """Write one study's files under ``folder/key``; ``kinds`` name its series (keys of ``_SERIES_KINDS``).

    ``slices`` overrides the thin series' slice count (the current study of a benchmark: 300).
    """
    target = folder / key
    target.mkdir(parents=True, exist_ok=True)
    series = []
    for kind in kinds:
        name, number, modality, sop_class, image_type, count, _ = _SERIES_KINDS[kind]
        count = slices if slices is not None and kind == "thin" else count
        uids = tuple(_uid(key, kind, i) for i in range(count))
        series.append(SeriesSpec(_uid(key, kind), number, modality, name, sop_class, image_type, uids))
    accession = f"ACC-{key.upper()}"[:16]
    study = StudySpec(_uid(key), patient_id, issuer, patient_name, date, description, accession, tuple(series))
    files = []
    for spec, kind in zip(series, kinds, strict=True):
        spacing = _SERIES_KINDS[kind][6]
        for i, sop_uid in enumerate(spec.instance_uids):
            if kind == "dose":
                ds = _secondary_capture(study, spec, sop_uid)
            elif kind == "report":
                ds = _report(study, spec, sop_uid)
            else:  # slices from the apex (z = 0) down, centred on the thin series' range
                z = -(i * spacing) - (0.0 if kind != "thick" else 2.5)
                ds = _image(study, spec, i + 1, sop_uid, z, spacing or 5.0)
            files.append(_write(ds, target))
    return StudySpec(**{**study.__dict__, "files": tuple(files)})


def build_priors(folder: Path) -> PriorDataSet:
    """Write the prior data set of the module's docstring under ``folder``."""
    ct_kinds = ("localizer", "thin", "thick", "dose", "report")
    common: dict[str, Any] = {"description": "CT CHEST WITH CONTRAST"}
    return PriorDataSet(
        ct=build_study(folder, "ct", patient_id=PATIENT_ID, issuer=ISSUER, date="20240301", kinds=ct_kinds, **common),
        radiograph=build_study(
            folder, "cr", patient_id=PATIENT_ID, issuer=ISSUER, date="20241115", description="XR CHEST PA",
            kinds=("radiograph",),
        ),
        old_ct=build_study(
            folder, "old", patient_id=PATIENT_ID, issuer=ISSUER, date="20180110", kinds=("thick",), **common
        ),
        other_issuer=build_study(
            folder, "issuer", patient_id=PATIENT_ID, issuer=OTHER_ISSUER, date="20240901", kinds=("thick",),
            patient_name="OTHER^PERSON", **common,
        ),
        same_name=build_study(
            folder, "name", patient_id=SAME_NAME_PATIENT_ID, issuer=ISSUER, date="20241201", kinds=("thick",),
            **common,
        ),
    )  # fmt: skip


def build_current_study(folder: Path, *, slices: int = 20, date: str = "20250310") -> StudySpec:
    """Write the patient's current chest CT (a localizer and a ``slices``-slice axial series) under ``folder``."""
    return build_study(
        folder, f"cur{date}-{slices}", patient_id=PATIENT_ID, issuer=ISSUER, date=date,
        description="CT CHEST WITH CONTRAST", kinds=("localizer", "thin"), slices=slices,
    )  # fmt: skip


@dataclass
class PriorPacs:
    """Orthanc holding the prior data set: DIMSE on ``dicom_port``, DICOMweb at ``dicomweb_url``."""

    orthanc: OrthancServer
    data: PriorDataSet

    @property
    def dicomweb_url(self) -> str:
        return f"{self.orthanc.url}/dicom-web"

    def register(self, ae_title: str = OUR_AE, port: int = 11112, host: str = "127.0.0.1") -> None:
        """Make an AE known to the PACS (C-FIND, C-GET; C-MOVE sends to ``host:port``): replaces an earlier entry."""
        entry = {"AET": ae_title, "Host": host, "Port": port}
        entry |= {f"Allow{op}": True for op in ("Echo", "Find", "Get", "Move", "Store")}
        self.orthanc.request("PUT", f"/modalities/{ae_title.lower()}", json.dumps(entry).encode(), "application/json")

    def source(self, kind: str = "dimse", name: str = "pacs", **values: Any) -> PriorSource:
        """A prior source configured for this PACS (``values`` override or add fields)."""
        if kind == "dimse":
            base: dict[str, Any] = {"ae_title": self.orthanc.aet, "host": "127.0.0.1", "port": self.orthanc.dicom_port}
        else:
            base = {"url": self.dicomweb_url}
        return PriorSource(name=name, kind=kind, timeout=10, **(base | values))

    def upload(self, files: Sequence[Path]) -> None:
        """Put more files into the PACS (a current study's, for a test that needs the PACS to hold it)."""
        for path in files:
            self.orthanc.upload(path)


def start_prior_pacs(folder: Path) -> PriorPacs:
    """Build the data set under ``folder``, start Orthanc with it and register :data:`OUR_AE`."""
    data = build_priors(folder / "priors")
    orthanc = OrthancServer(plugins=[DICOMWEB_PLUGIN], folder=folder / "orthanc", aet="PRIORPACS")
    orthanc.start()
    try:
        pacs = PriorPacs(orthanc, data)
        for study in data.studies:
            pacs.upload(study.files)
        pacs.register()
    except BaseException:
        orthanc.stop()
        raise
    return pacs


@pytest.fixture(scope="session")
def prior_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PriorPacs]:
    """Orthanc (with DICOMweb) holding the prior data set for the whole session; our AE title registered."""
    pacs = start_prior_pacs(tmp_path_factory.mktemp("prior-pacs"))
    yield pacs
    pacs.orthanc.stop()
