"""The key images of a draft: a Key Object Selection document listing the images the model saw.

A viewer shows a study's KOS documents as key images (OHIF and most PACS viewers flag them in the series
list), so a radiologist reading the study in the hospital's viewer sees which images the AI draft rests on.
One per draft, beside its TID 2000 SR (:mod:`integration.reports.sr`) and its TID 1500 (:mod:`.sr_measurement`):

* Title (CID 7010): (113000, DCM, "Of Interest"): images of interest, not a rejection (the IOCM rejection
  notes of :mod:`integration.reports.rejection_note` use CID 7011 titles).
* Content (TID 2010): the device observer (the model, TID 1004, as in the SR), a Key Object Description that
  says these are an AI draft's images, one IMAGE item per instance of the current study the model saw (with its
  frame numbers when multi-frame), and a COMPOSITE item referencing the draft's SR.
* Its own series (:data:`~integration.store.viewer_tables.KEY_IMAGES_SERIES_NUMBER`).

A prior study's images the model compared with are left out: a KOS lives in one study and highdicom (like
IHE's key image note) does not reference instances of other studies from it.  Signed versions get no KOS: the
images the model saw do not change when a radiologist signs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import ImageContentItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DT

from integration.reports.sr import (
    CHARACTER_SET,
    MANUFACTURER,
    Algorithm,
    device_observer,
    evidence_datasets,
    software_version,
)
from integration.reports.sr_content import ImageReference, SeenFrame, references_of
from integration.store.viewer_tables import KEY_IMAGES_SERIES_NUMBER

#: The document title, from CID 7010 "Key Object Selection Document Title".
OF_INTEREST = codes.cid7010.OfInterest
#: The Key Object Description (no free text of the report: it may name the patient).
DESCRIPTION = "Images an AI model saw to write its draft report (not verified by a radiologist)."
SERIES_DESCRIPTION = "AI draft key images"


@dataclass(frozen=True)
class KeyImagesReading:
    """A key images document read back through highdicom."""

    sop_instance_uid: str
    series_number: int
    title: str
    description: str
    images: tuple[ImageReference, ...]
    documents: tuple[str, ...]
    device_observer_uid: str
    evidence: tuple[str, ...]


def _marked_as_images(datasets: list[Dataset], images: set[str]) -> list[Dataset]:
    """Return copies that highdicom refers to as IMAGE items (it does so for Rows and Columns, COMPOSITE else)."""
    marked = []
    for ds in datasets:
        copy = Dataset()
        copy.update(ds)
        if str(ds.SOPInstanceUID) in images:
            copy.Rows = copy.get("Rows", 1)
            copy.Columns = copy.get("Columns", 1)
        marked.append(copy)
    return marked


def build_key_images(
    source: Dataset,
    evidence: tuple[SeenFrame, ...],
    draft_sr: Dataset,
    algorithm: Algorithm,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
) -> hd.ko.KeyObjectSelectionDocument:
    """Build the key images document of a draft (see the module docstring).

    Parameters
    ----------
    source : pydicom.Dataset
        Header of one instance of the study (patient and study modules are copied from it).
    evidence : tuple of SeenFrame
        What the model saw (a prior study's frames are left out).
    draft_sr : pydicom.Dataset
        The draft's SR (its header is enough): referenced beside the images.
    algorithm : Algorithm
        The model (the device observer).
    sop_instance_uid, series_instance_uid : str
        The document's UIDs (allocated once in ``report_objects``).

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        The document, with file meta, ready to write.

    Raises
    ------
    ValueError
        From highdicom, when the source lacks the patient or study module.
    """
    current = tuple(frame for frame in evidence if frame.study_uid is None)
    references = references_of({frame.image for frame in current}, current)
    datasets = evidence_datasets(source, current) if references else []
    # The patient and study modules (evidence for a draft without images seen); a deep copy: highdicom's
    # evidence datasets share their elements with the source, and the UIDs set below must not reach them.
    sr = deepcopy(evidence_datasets(source, ())[0])
    for keyword in ("Rows", "Columns"):  # not an image: a COMPOSITE item
        if keyword in sr:
            delattr(sr, keyword)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        setattr(sr, keyword, draft_sr[keyword].value)
    evidence_items = [*_marked_as_images(datasets, {ref.sop_instance_uid for ref in references}), sr]
    content = hd.ko.KeyObjectSelection(
        document_title=OF_INTEREST,
        referenced_objects=evidence_items,
        observer_device_context=device_observer(algorithm),
        description=DESCRIPTION,
    )
    frames = {ref.sop_instance_uid: ref.frames for ref in references}
    for item in content[0].ContentSequence:
        if isinstance(item, ImageContentItem) and frames.get(item.referenced_sop_instance_uid):
            item.ReferencedSOPSequence[0].ReferencedFrameNumber = list(frames[item.referenced_sop_instance_uid])
    with warnings.catch_warnings():
        # The patient's name is copied as the modality wrote it (as for the SR).
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        document = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence_items,
            content=content,
            series_instance_uid=series_instance_uid,
            series_number=KEY_IMAGES_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            specific_character_set=CHARACTER_SET,
            manufacturer_model_name=MANUFACTURER,
            software_versions=software_version(),
            series_description=SERIES_DESCRIPTION,
        )
    # Deterministic: the draft SR's content date and time, not "now" (a rebuilt document is the same document).
    for keyword in ("ContentDate", "ContentTime"):
        if keyword in draft_sr:
            setattr(document, keyword, draft_sr[keyword].value)
    document.InstanceCreationDate = document.ContentDate
    document.InstanceCreationTime = document.ContentTime
    for equipment in document.get("ContributingEquipmentSequence", []):
        equipment.ContributionDateTime = DT(f"{document.ContentDate}{document.ContentTime}")
    return document


def _frames(ref: Dataset) -> tuple[int, ...]:
    frames = ref.get("ReferencedFrameNumber")
    return () if frames is None else tuple(int(f) for f in (frames if isinstance(frames, Sequence) else [frames]))


def read_key_images(dataset: Dataset) -> KeyImagesReading:
    """Read a key images document back through highdicom.

    Parameters
    ----------
    dataset : pydicom.Dataset
        The document (as read with ``pydicom.dcmread``).

    Returns
    -------
    KeyImagesReading
        Title, description, the images (with frames) and other documents referenced, the device observer and
        the evidence (SOP Instance UIDs).

    Raises
    ------
    ValueError
        The dataset is not a Key Object Selection document.
    """
    document = hd.ko.KeyObjectSelectionDocument.from_dataset(dataset)
    content = document.content
    root = content[0]
    description = next(
        (str(item.TextValue) for item in root.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "113012"),
        "",
    )
    images = tuple(
        ImageReference(
            str(item.ReferencedSOPSequence[0].ReferencedSOPClassUID),
            str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            _frames(item.ReferencedSOPSequence[0]),
        )
        for item in content.get_references(value_type=hd.sr.ValueTypeValues.IMAGE)
    )
    documents = tuple(
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in content.get_references(value_type=hd.sr.ValueTypeValues.COMPOSITE)
    )
    devices = content.get_observer_contexts(observer_type=codes.DCM.Device)
    return KeyImagesReading(
        sop_instance_uid=str(document.SOPInstanceUID),
        series_number=int(document.SeriesNumber),
        title=str(root.ConceptNameCodeSequence[0].CodeMeaning),
        description=description,
        images=images,
        documents=documents,
        device_observer_uid=str(getattr(devices[0].observer_identifying_attributes, "uid", "")) if devices else "",
        evidence=tuple(
            str(ref.ReferencedSOPInstanceUID)
            for study in document.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        ),
    )
