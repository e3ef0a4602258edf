"""The IHE IOCM rejection note of a withdrawn draft: a Key Object Selection document that takes back its SR.

A DICOM receiver (PACS, VNA) that got a draft's SR gets, when the draft is withdrawn (rejected by a
radiologist, superseded by a newer study version, or its order cancelled), the rejection note of IHE
Imaging Object Change Management (IOCM, RAD TF-3 4.66): a Key Object Selection (KOS) document whose
title is a rejection code and whose content and Current Requested Procedure Evidence Sequence reference
the rejected instance.  An IOCM Image Manager hides the referenced instance from regular queries (or
deletes it); one without IOCM stores the note as one more instance of the study, beside the SR.

Title (TID 2010's concept name, CID 7011): (113001, DCM, "Rejected for Quality Reasons").  IOCM keeps
(113037, DCM, "Rejected for Patient Safety Reasons") for instances that could harm a patient if anyone
saw them (the wrong patient's images, wrong laterality) and Image Managers then hide them from every
user, even from quality control; (113038, DCM, "Incorrect Modality Worklist Entry") is for instances
acquired against the wrong order.  A withdrawn draft is none of these: it is correctly identified, it
is only content that must not be used (an AI draft a radiologist rejected, or that a newer version or a
cancelled order made obsolete), which is what a quality rejection says.

Content (TID 2010): the title container, a Key Object Description (113012, DCM) saying why, and one
COMPOSITE item referencing the draft SR (its SOP Class and Instance UID); the evidence sequence names
the SR's study, series and instance.  A draft's TID 1500 and key images documents, when a receiver got
them, are taken back likewise, each by a note of its own.  The note is built with highdicom (``hd.ko``);
patient and study attributes come from the rejected document.

Identity: its own series (:data:`SERIES_NUMBER`, never the SR's series), SOP Instance and Series
Instance UIDs derived from the SR's SOP Instance UID (:func:`integration.uids.derived_uid`), so
building it again (a lost file, a re-send) gives the same instance and a receiver never holds two
notes for one draft.  The file is stored like SR files, ``reports/<study UID>/<SOP Instance UID>.dcm``
under the data folder, written once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.sr.coding import Code

from integration.config import Settings
from integration.reports.drafts import ensure_draft_sr, report_object_file
from integration.reports.sr import MANUFACTURER
from integration.reports.sr_files import sr_path_of, write_document
from integration.uids import derived_uid

log = logging.getLogger(__name__)

#: The note's title: the IOCM rejection reason (see the module docstring for the choice).
REJECTED_FOR_QUALITY_REASONS = Code("113001", "DCM", "Rejected for Quality Reasons")
#: Series number of rejection notes (drafts are 9901, signed reports 9902).
SERIES_NUMBER = 9903
#: The Key Object Description of every note (no free text of the withdrawal: it may name the patient).
DESCRIPTION = "AI-generated draft report withdrawn; it must not be used."
#: Series Description of the note's series.
SERIES_DESCRIPTION = "Rejection note (AI draft withdrawn)"


def rejection_note_uids(sr_sop_instance_uid: str) -> tuple[str, str]:
    """Return the (Series Instance UID, SOP Instance UID) of the rejection note of an SR.

    Parameters
    ----------
    sr_sop_instance_uid : str
        The rejected SR's SOP Instance UID.

    Returns
    -------
    tuple of str
        UIDs derived from it, the same on every call.
    """
    return (
        derived_uid(sr_sop_instance_uid, "iocm-rejection-note", "series"),
        derived_uid(sr_sop_instance_uid, "iocm-rejection-note", "instance"),
    )


def build_rejection_note(sr: Dataset) -> hd.ko.KeyObjectSelectionDocument:
    """Build the IOCM rejection note of an SR (see the module docstring).

    Parameters
    ----------
    sr : pydicom.Dataset
        The rejected SR (patient, study and its own UIDs are read).

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        The note, with file meta, ready to write.

    Raises
    ------
    ValueError
        From highdicom, when the SR lacks the attributes the note copies (study or patient module).
    """
    series_uid, sop_uid = rejection_note_uids(str(sr.SOPInstanceUID))
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS, referenced_objects=[sr], description=DESCRIPTION
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=[sr],
        content=content,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        institution_name=str(sr.InstitutionName) if sr.get("InstitutionName") else None,
    )
    note.SeriesDescription = SERIES_DESCRIPTION
    return note


def ensure_rejection_note(settings: Settings, report_id: int, document: str = "sr") -> Path:
    """Return the stored rejection note of a draft's SR (or of its TID 1500 or key images), writing it once.

    Idempotent.  Each document a receiver got has a note of its own (UIDs derived from the document's).

    Parameters
    ----------
    settings : Settings
        Data folder, instance store, database.
    report_id : int
        The withdrawn draft.
    document : str
        ``sr``, ``tid1500`` or ``kos``: which of the draft's documents is taken back.

    Returns
    -------
    pathlib.Path
        ``settings.data_dir / "reports" / <study UID> / <note's SOP Instance UID>.dcm``.

    Raises
    ------
    integration.store.revisions.UnknownReport
        No report has this id.
    integration.reports.drafts.SourceUnavailable
        The draft has no SR and none can be built.
    integration.reports.report_objects.ObjectUnavailable
        The draft never had the TID 1500 or key images named.
    """
    if document == "sr":
        rejected = ensure_draft_sr(settings, report_id)
    else:
        from integration.store.viewer_tables import ReportObjectKind

        rejected = report_object_file(settings, report_id, None, ReportObjectKind(document))
    sr = dcmread(rejected, stop_before_pixels=True)
    _, sop_uid = rejection_note_uids(str(sr.SOPInstanceUID))
    path = settings.data_dir / sr_path_of(str(sr.StudyInstanceUID), sop_uid)
    if not path.is_file():
        write_document(path, build_rejection_note(sr), fsync=settings.fsync)
        log.info("report %d: rejection note %s of its %s written", report_id, sop_uid, document)
    return path
