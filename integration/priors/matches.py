"""What an archive answers: the studies and series a query found, what a retrieval brought, and its errors.

Plain values shared by every archive client (:mod:`integration.priors.dimse`, :mod:`integration.priors.dicomweb`)
and whoever asks them (:mod:`integration.priors.archive` names the interface).  They hold what the archive
said, unjudged: which of them is a prior of which study is the matching's question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
