"""What an archive answers: the studies and series a query found, what a retrieval brought, and its errors.

Plain values shared by every archive client (:mod:`integration.priors.dimse`, :mod:`integration.priors.dicomweb`)
and whoever asks them (:mod:`integration.priors.archive` names the interface).  They hold what the archive
said, unjudged: which of them is a prior of which study is the matching's question.

Both clients read their answers -- C-FIND identifiers, QIDO-RS DICOM JSON as data sets -- into these values
here (:func:`study_match`, :func:`series_match`), so a study or series is the same whichever protocol found it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from integration.intake.outcome import StoreOutcome

#: Where retrieved instances go: ``sink(data_set, transfer_syntax_uid)`` with the encoded data set
#: (no file meta) in that transfer syntax; answers what became of it (the intake's ``store``).
InstanceSink = Callable[[bytes, str], StoreOutcome]


class ArchiveError(RuntimeError):
    """The archive could not be asked or did not answer: unreachable, refused, timed out, a failure status.

    Also raised when the question cannot be asked (an empty Patient ID would match every patient).  The
    message says why in a few words, naming the source, never patient data (safe to log and store).
    """


@dataclass(frozen=True)
class StudyMatch:
    """One study an archive holds for a patient.

    Attributes
    ----------
    source : str
        The prior source's name.
    study_uid : str
        Study Instance UID.
    patient_id : str
        Patient ID as the archive holds it.
    issuer : str or None
        Issuer of Patient ID, when the archive returned one.
    study_date : str or None
        Study Date, ``YYYYMMDD``.
    modalities : tuple of str
        Modalities in Study.
    description : str or None
        Study Description.
    accession : str or None
        Accession Number.
    """

    source: str
    study_uid: str
    patient_id: str
    issuer: str | None
    study_date: str | None
    modalities: tuple[str, ...]
    description: str | None
    accession: str | None


@dataclass(frozen=True)
class SeriesMatch:
    """One series of a study an archive holds.

    Attributes
    ----------
    series_uid : str
        Series Instance UID.
    modality : str or None
        Modality.
    series_number : int or None
        Series Number.
    description : str or None
        Series Description.
    body_part : str or None
        Body Part Examined.
    instances : int or None
        Number of Series Related Instances, when the archive counts them.
    sop_class_uids : tuple of str
        SOP Class UID of the series' first instance (an image-level query; empty when it found none).
    image_types : tuple of str
        Image Type values of that instance (``ORIGINAL``, ``PRIMARY``, ``LOCALIZER`` ...).
    """

    series_uid: str
    modality: str | None
    series_number: int | None
    description: str | None
    body_part: str | None
    instances: int | None
    sop_class_uids: tuple[str, ...] = ()
    image_types: tuple[str, ...] = ()

    def order(self) -> tuple[bool, int, str]:
        """Sort key: by Series Number, series without one last, then by UID."""
        return (self.series_number is None, self.series_number or 0, self.series_uid)


@dataclass(frozen=True)
class RetrieveResult:
    """What a retrieval brought.

    Attributes
    ----------
    stored : int
        Instances stored now (C-MOVE: the sub-operations the archive reports completed, warnings included).
    duplicates : int
        Instances we already held (C-GET and WADO-RS only).
    failed : int
        Instances that did not arrive or that the intake refused.
    bytes : int
        Encoded data set bytes received (0 for C-MOVE: they arrive on the listener).
    seconds : float
        Wall time of the retrieval.
    problems : tuple of str
        Short reasons of what went wrong (a refused instance, a warning status), no patient data.
    """

    stored: int
    duplicates: int
    failed: int
    bytes: int
    seconds: float
    problems: tuple[str, ...] = ()


def check_patient_id(patient_id: str) -> None:
    """Refuse a Patient ID a prior search cannot ask for.

    Raises
    ------
    ArchiveError
        The Patient ID is empty (it would match every patient) or holds a backslash (it would be two).
    """
    if not patient_id.strip() or "\\" in patient_id:
        raise ArchiveError("a prior search needs one non-empty Patient ID (an empty one matches every patient)")


def study_match(ds: Dataset, source: str, patient_id: str, issuer: str | None) -> StudyMatch | None:
    """Read a study-level answer into a :class:`StudyMatch` of the patient asked for.

    Parameters
    ----------
    ds : Dataset
        One answer (a C-FIND identifier, or a QIDO-RS result as a data set).
    source : str
        The prior source's name.
    patient_id, issuer : str, str or None
        What was asked for.

    Returns
    -------
    StudyMatch or None
        None when the answer names no study or is not of that patient: an archive may match loosely (wildcards
        in an ID, an issuer it cannot match on), so only an exact Patient ID and no other issuer are kept.
    """
    study_uid, found_issuer = element_text(ds, "StudyInstanceUID"), element_text(ds, "IssuerOfPatientID")
    if not study_uid or element_text(ds, "PatientID") != patient_id:
        return None
    if issuer and found_issuer and found_issuer != issuer:
        return None
    return StudyMatch(
        source=source,
        study_uid=study_uid,
        patient_id=patient_id,
        issuer=found_issuer,
        study_date=element_text(ds, "StudyDate"),
        modalities=element_values(ds, "ModalitiesInStudy"),
        description=element_text(ds, "StudyDescription"),
        accession=element_text(ds, "AccessionNumber"),
    )


def series_match(ds: Dataset, first_instance: Dataset | None) -> SeriesMatch:
    """Read a series-level answer, and the image-level answer of its first instance, into a :class:`SeriesMatch`.

    Parameters
    ----------
    ds : Dataset
        The series' answer; it names a Series Instance UID (callers skip those that do not: they need it to ask
        for the first instance).
    first_instance : Dataset or None
        The answer for one of its instances (its SOP Class UID and Image Type), None when there was none.

    Raises
    ------
    ValueError
        ``ds`` names no Series Instance UID.
    """
    series_uid = element_text(ds, "SeriesInstanceUID")
    if not series_uid:
        raise ValueError("a series answer without a Series Instance UID")
    sop_class = element_text(first_instance, "SOPClassUID")
    return SeriesMatch(
        series_uid=series_uid,
        modality=element_text(ds, "Modality"),
        series_number=element_number(ds, "SeriesNumber"),
        description=element_text(ds, "SeriesDescription"),
        body_part=element_text(ds, "BodyPartExamined"),
        instances=element_number(ds, "NumberOfSeriesRelatedInstances"),
        sop_class_uids=(sop_class,) if sop_class else (),
        image_types=element_values(first_instance, "ImageType"),
    )


def element_text(ds: Dataset | None, keyword: str) -> str | None:
    """An answer's element as stripped text; None when ``ds`` is None or the element is absent or empty."""
    value = None if ds is None else ds.get(keyword)
    if value is None or value == "":
        return None
    text = str(value).strip()
    return text or None


def element_values(ds: Dataset | None, keyword: str) -> tuple[str, ...]:
    """An answer's element as its non-empty stripped values (one for a single value); () when absent or empty."""
    value = None if ds is None else ds.get(keyword)
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) or not isinstance(value, Iterable) else value
    return tuple(str(v).strip() for v in items if str(v).strip())


def element_number(ds: Dataset | None, keyword: str) -> int | None:
    """An answer's element as a whole number (an IS, or a DS cut to one); None when absent or not a number."""
    text = element_text(ds, keyword)
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def note_problem(problems: list[str], text: str) -> None:
    """Add a retrieval problem to ``problems``: each once, ten at the most."""
    if text not in problems and len(problems) < 10:
        problems.append(text)
