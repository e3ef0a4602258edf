"""QIDO-RS results as DICOM JSON (PS3.18 F.2): the attributes each level returns, and where they come from.

The database knows the UIDs, modality, numbers and the worklist columns; the catalog gives the counts and
the modalities of a study (our own SR and KOS included).  Everything else a viewer expects (StudyTime,
ReferringPhysicianName, StudyID, SeriesDescription, Rows, Columns, NumberOfFrames, and any ``includefield``)
is read from one representative file's header: the study's first received instance, the series' first
object, the instance itself.  Headers are read without pixel data, only the tags asked for, and kept in a
small cache keyed by the file's path, size and modification time, so a viewer paging through a worklist
reads each file once.  The answer is UTF-8 JSON, so it states ``ISO_IR 192`` whatever the file's character
set was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword

from integration.config import Settings
from integration.store.catalog import ObjectRoot, StoredObject, StudySummary
from integration.store.tables import Study

log = logging.getLogger(__name__)

#: Attributes each level returns by default (PS3.18 Table 10.6.3-3 to 10.6.3-5) that come from a header.
STUDY_HEADER = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDescription",
)
SERIES_HEADER = (
    "SeriesDescription",
    "TimezoneOffsetFromUTC",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    "SeriesDate",
    "SeriesTime",
)
INSTANCE_HEADER = ("TimezoneOffsetFromUTC", "Rows", "Columns", "BitsAllocated", "NumberOfFrames")
#: What ``includefield=all`` adds, per level.
STUDY_ALL = ("IssuerOfPatientID", "PatientAge", "NameOfPhysiciansReadingStudy", "OtherPatientIDsSequence")
SERIES_ALL = ("BodyPartExamined", "ProtocolName", "Laterality", "Manufacturer", "StationName", "OperatorsName")
INSTANCE_ALL = (
    "ImageType",
    "ContentDate",
    "ContentTime",
    "AcquisitionNumber",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "BitsStored",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "WindowCenter",
    "WindowWidth",
    "ConceptNameCodeSequence",
    "CompletionFlag",
    "VerificationFlag",
)
#: Study columns given when the header lacks the attribute (uploads, unreadable files).
_STUDY_COLUMNS = {
    "StudyDate": "study_date",
    "AccessionNumber": "accession_number",
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyDescription": "study_description",
}
#: Binary value representations: never returned inline by a query.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Header reads kept (each a few small JSON values).
_CACHE_SIZE = 20000


def tag_of(keyword: str) -> str:
    """The eight hex digits of a keyword's tag (``PatientName`` -> ``00100010``)."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def value(keyword: str, *values: Any) -> dict[str, Any]:
    """One attribute in DICOM JSON, with its dictionary VR (no ``Value`` when there is none)."""
    vr = dictionary_VR(keyword)
    present = [item for item in values if item is not None and item != ""]
    if not present:
        return {"vr": vr}
    if vr == "PN":
        present = [{"Alphabetic": str(item)} for item in present]
    return {"vr": vr, "Value": present}


def path_of(settings: Settings, item: StoredObject) -> Path:
    """The file of a catalog object (paths come from the database, never from a request)."""
    root = settings.instance_root if item.root is ObjectRoot.INSTANCES else settings.data_dir
    return root / item.path


@lru_cache(maxsize=_CACHE_SIZE)
def _read_header(path: str, _mtime_ns: int, _size: int, keywords: tuple[str, ...]) -> dict[str, Any]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(keywords), force=True)
    found: dict[str, Any] = {}
    for keyword in keywords:
        if keyword not in ds:
            continue
        try:
            element = ds[keyword]
            if element.VR in _BINARY_VRS:
                continue
            found[tag_of(keyword)] = element.to_json_dict(None, 1 << 20)
        except Exception:  # one malformed value must not lose the others
            continue
    return found


def header(path: Path, keywords: Iterable[str]) -> dict[str, Any]:
    """The DICOM JSON of these attributes of a file's header (cached); empty when the file cannot be read."""
    wanted = tuple(sorted(set(keywords)))
    try:
        stat = os.stat(path)
        return dict(_read_header(str(path), stat.st_mtime_ns, stat.st_size, wanted))
    except Exception as exc:  # a missing or damaged file leaves the database's attributes only
        log.warning("QIDO-RS: a header was not read: %s", type(exc).__name__)
        return {}


def sorted_json(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes in tag order, as DICOM JSON lists them."""
    return {tag: attributes[tag] for tag in sorted(attributes)}


def _computed(pairs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {tag_of(keyword): item for keyword, item in pairs.items()}


def study_attributes(
    settings: Settings, study: Study, summary: StudySummary, base: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """A study's attributes: from its first received instance's header, the database and its summary."""
    found = header(path_of(settings, summary.first), (*STUDY_HEADER, *extra)) if summary.first else {}
    for keyword, column in _STUDY_COLUMNS.items():
        if "Value" not in found.get(tag_of(keyword), {}):
            found[tag_of(keyword)] = value(keyword, getattr(study, column))
    found.update(
        _computed(
            {
                "SpecificCharacterSet": value("SpecificCharacterSet", "ISO_IR 192"),
                "StudyInstanceUID": value("StudyInstanceUID", study.study_uid),
                "ModalitiesInStudy": value("ModalitiesInStudy", *summary.modalities),
                "NumberOfStudyRelatedSeries": value("NumberOfStudyRelatedSeries", summary.series),
                "NumberOfStudyRelatedInstances": value("NumberOfStudyRelatedInstances", summary.instances),
                "InstanceAvailability": value("InstanceAvailability", "ONLINE"),
                "RetrieveURL": value("RetrieveURL", f"{base}/studies/{study.study_uid}"),
            }
        )
    )
    for keyword in ("StudyTime", "ReferringPhysicianName", "StudyID", "TimezoneOffsetFromUTC"):
        found.setdefault(tag_of(keyword), value(keyword))
    return found


def series_attributes(
    settings: Settings, series: Sequence[StoredObject], base: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """A series' attributes: from its first object's header and the catalog."""
    first = series[0]
    found = header(path_of(settings, first), (*SERIES_HEADER, *extra))
    found.update(
        _computed(
            {
                "SpecificCharacterSet": value("SpecificCharacterSet", "ISO_IR 192"),
                "StudyInstanceUID": value("StudyInstanceUID", first.study_uid),
                "SeriesInstanceUID": value("SeriesInstanceUID", first.series_uid),
                "Modality": value("Modality", first.modality),
                "SeriesNumber": value("SeriesNumber", first.series_number),
                "NumberOfSeriesRelatedInstances": value("NumberOfSeriesRelatedInstances", len(series)),
                "RetrieveURL": value("RetrieveURL", f"{base}/studies/{first.study_uid}/series/{first.series_uid}"),
            }
        )
    )
    found.setdefault(tag_of("SeriesDescription"), value("SeriesDescription"))
    return found


def instance_attributes(settings: Settings, item: StoredObject, base: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """An instance's attributes: from its own header and the catalog."""
    found = header(path_of(settings, item), (*INSTANCE_HEADER, *extra))
    url = f"{base}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_instance_uid}"
    found.update(
        _computed(
            {
                "SpecificCharacterSet": value("SpecificCharacterSet", "ISO_IR 192"),
                "StudyInstanceUID": value("StudyInstanceUID", item.study_uid),
                "SeriesInstanceUID": value("SeriesInstanceUID", item.series_uid),
                "SOPClassUID": value("SOPClassUID", item.sop_class_uid),
                "SOPInstanceUID": value("SOPInstanceUID", item.sop_instance_uid),
                "InstanceNumber": value("InstanceNumber", item.instance_number),
                "InstanceAvailability": value("InstanceAvailability", "ONLINE"),
                "RetrieveURL": value("RetrieveURL", url),
            }
        )
    )
    return found
