"""What a study's DICOM headers say that a draft can contradict, and the identifiers a draft must not echo.

:meth:`StudyFacts.read` reads the headers (never the pixels) of the images the model saw, by image number,
and of the study's other files: Patient's Sex, Modality, Body Part Examined, Study Description, per image
its Laterality (0020,0060), Image Laterality (0020,0062) and View Position (0018,5101), whether a
Contrast/Bolus Agent (0018,0010) is recorded, and the patient's identifiers (name components, Patient ID,
Other Patient IDs, Accession Number, birth date).

The identifiers stay in memory: nothing here logs, their ``repr`` shows counts only, the consistency
checks' messages never quote them, and pydicom's value validation (whose warnings and log records name
invalid values) is off while the headers are read.  A file that cannot be read adds nothing (the facts it
would have given are unknown, and an unknown fact flags nothing).
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

#: The header attributes read (by keyword); the pixels are never read.
READ_KEYWORDS = (
    "PatientSex",
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "Laterality",
    "ImageLaterality",
    "ViewPosition",
    "ContrastBolusAgent",
    "ContrastBolusAgentSequence",
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "AccessionNumber",
    "PatientBirthDate",
)
#: Sides a header may give: (0020,0060) and (0020,0062) say R or L (B both, U unpaired; those give no side).
SIDES = ("R", "L")
#: A mammography-style view code that names its side: ``LCC``, ``RMLO``, ``L MLO``.
_SIDED_VIEW = re.compile(r"^([LR])\s*-?\s*(CC|MLO|ML|LM|LMO|XCCL|XCCM|FB|SIO|AT|CV|RL|RM|TAN)$")
#: Words of a study, series or protocol description that say contrast was given ...
_CONTRAST_WORDS = re.compile(
    r"(?<![a-z])(?:contrast|con|c\+|w|ce|enhanced|post|postcon|gad\w*|angio\w*|cta|arterial|venous|portal)(?![a-z])"
)
#: ... once the words that say it was not (or that name the plain series of a with-and-without study) are gone.
_NO_CONTRAST = re.compile(
    r"(?<![a-z])(?:w/o|wo|without|non|no)[\s-]*(?:iv\s+)?(?:contrast|con)?(?![a-z+])|non[\s-]?contrast|noncon\w*"
    r"|unenhanced|non[\s-]?enhanced|plain"
)
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
#: One reading at a time: pydicom's validation setting is global (see :func:`_unvalidated`).
_READING = threading.Lock()


@dataclass(frozen=True)
class ImageFacts:
    """What the header of one image (as numbered for the model) says about its side and view.

    Attributes
    ----------
    laterality : str or None
        Laterality (0020,0060) of its series: ``R``, ``L`` (other values, or none, read as None).
    image_laterality : str or None
        Image Laterality (0020,0062): ``R``, ``L``, ``B`` (both) or ``U`` (unpaired); None when absent.
    view : str or None
        View Position (0018,5101) as recorded (``PA``, ``CC``, ``LMLO``), None when absent.
    """

    laterality: str | None = None
    image_laterality: str | None = None
    view: str | None = None

    @property
    def side(self) -> tuple[str, str] | None:
        """The image's side and the attribute that says so: ``("R", "Image Laterality")``; None if none does."""
        if self.image_laterality in SIDES:
            return self.image_laterality, "Image Laterality"
        if self.image_laterality in ("B", "U"):  # both sides, or an unpaired part: no one side
            return None
        if self.laterality in SIDES:
            return self.laterality, "Laterality"
        if self.view and (match := _SIDED_VIEW.match(self.view.upper())):
            return match.group(1), "View Position"
        return None


@dataclass(frozen=True)
class Identifiers:
    """The patient's identifiers as the headers give them, to mask in a draft; kept in memory only.

    Attributes
    ----------
    names : tuple of str
        The components of the patient's names (Patient's Name, Other Patient Names, Patient's Birth Name),
        each of two letters or more, as written.
    ids : tuple of str
        Patient ID and Other Patient IDs (both forms).
    accessions : tuple of str
        The study's Accession Number(s).
    birth_dates : tuple of str
        Patient's Birth Date, ``YYYYMMDD`` (valid dates only).
    """

    names: tuple[str, ...] = field(default=(), repr=False)
    ids: tuple[str, ...] = field(default=(), repr=False)
    accessions: tuple[str, ...] = field(default=(), repr=False)
    birth_dates: tuple[str, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        names = ("names", "ids", "accessions", "birth_dates")
        counts = ", ".join(f"{name}={len(getattr(self, name))}" for name in names)
        return f"Identifiers({counts})"

    def __bool__(self) -> bool:
        return bool(self.names or self.ids or self.accessions or self.birth_dates)


@dataclass(frozen=True)
class StudyFacts:
    """What a study's headers say that a draft may contradict, and the identifiers it must not echo.

    Attributes
    ----------
    sex : str or None
        Patient's Sex: ``F``, ``M`` or ``O``; None when absent, empty or conflicting between files.
    modalities : frozenset of str
        The Modality of every file read (``CT``, ``MR``, ``SR`` ...).
    body_parts : frozenset of str
        Body Part Examined of every file read, upper case (``CHEST``, ``HEAD``).
    descriptions : tuple of str
        The distinct Study Descriptions (untrusted free text: never put in a message).
    images : mapping of int to ImageFacts
        Per image number the model saw: its side and view.
    contrast : bool or None
        Whether contrast is recorded: True when a file has a Contrast/Bolus Agent (0018,0010 or its sequence)
        or a study, series or protocol description that says so (``C+``, ``W/WO``, ``post``, ``angio``);
        False when files were read and none does; None when none could be read.
    identifiers : Identifiers
        The patient's identifiers (never logged, never in a message).
    """

    sex: str | None = None
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    descriptions: tuple[str, ...] = field(default=(), repr=False)
    images: Mapping[int, ImageFacts] = field(default_factory=lambda: MappingProxyType({}))
    contrast: bool | None = None
    identifiers: Identifiers = field(default_factory=Identifiers)

    @classmethod
    def read(cls, images: Mapping[int, Path] | Sequence[Path], all_files: Iterable[Path] = ()) -> StudyFacts:
        """Read the facts from the headers of the images the model saw and of the study's other files.

        Parameters
        ----------
        images : mapping of int to Path, or sequence of Path
            The file of each image number the model saw (a sequence: image 1 is its first file).  Several
            numbers may name one file (frames of a multi-frame instance).
        all_files : iterable of Path
            The study's other files (any order; those in ``images`` may be repeated): they add to the
            study-level facts (sex, modalities, body parts, descriptions, contrast, identifiers).

        Returns
        -------
        StudyFacts
            The facts; a file that cannot be read (missing, not DICOM) adds nothing.  Never raises for a file.
        """
        with _unvalidated():
            return cls._read(
                dict(images) if isinstance(images, Mapping) else dict(enumerate(images, start=1)), all_files
            )

    @classmethod
    def _read(cls, numbered: dict[int, Path], all_files: Iterable[Path]) -> StudyFacts:
        headers: dict[Path, Dataset | None] = {}
        for path in (*numbered.values(), *all_files):
            if path not in headers:
                headers[path] = _header(path)
        image_facts = {number: _image_facts(headers[path]) for number, path in sorted(numbered.items())}
        read = [header for header in headers.values() if header is not None]
        sexes = {sex for header in read if (sex := _text(header, "PatientSex").upper()) in ("F", "M", "O")}
        descriptions = _distinct(_text(header, "StudyDescription") for header in read)
        return cls(
            sex=sexes.pop() if len(sexes) == 1 else None,
            modalities=frozenset(m for header in read if (m := _text(header, "Modality").upper())),
            body_parts=frozenset(b for header in read if (b := _text(header, "BodyPartExamined").upper())),
            descriptions=descriptions,
            images=MappingProxyType(image_facts),
            contrast=any(_has_contrast(header) for header in read) if read else None,
            identifiers=_identifiers(read),
        )


@contextmanager
def _unvalidated() -> Iterator[None]:
    """Turn pydicom's reading validation off while facts are read: its warnings and log records quote values."""
    with _READING, pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(READ_KEYWORDS))
    except Exception:  # a file that cannot be read gives no facts (it is never fatal, and never logged)
        return None


def _text(header: Dataset | None, keyword: str) -> str:
    """An attribute's value as stripped text, values joined by a backslash ('' when absent, empty or a sequence)."""
    return "\\".join(_values(header, keyword)) if header is not None else ""


def _values(header: Dataset, keyword: str) -> list[str]:
    """An attribute's values as stripped text (none for a sequence or a value that cannot be read)."""
    try:
        value = header.get(keyword)
    except Exception:  # a malformed value reads as absent
        return []
    if value is None or isinstance(value, pydicom.sequence.Sequence):
        return []
    items: Iterable[Any] = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [text for item in items if (text := str(item).strip())]


def _distinct(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value for value in values if value))


def _image_facts(header: Dataset | None) -> ImageFacts:
    laterality = _text(header, "Laterality").upper()
    image_laterality = _text(header, "ImageLaterality").upper()
    return ImageFacts(
        laterality=laterality if laterality in SIDES else None,
        image_laterality=image_laterality if image_laterality in ("R", "L", "B", "U") else None,
        view=_text(header, "ViewPosition") or None,
    )


def _has_contrast(header: Dataset) -> bool:
    if _text(header, "ContrastBolusAgent"):
        return True
    if "ContrastBolusAgentSequence" in header and len(header.ContrastBolusAgentSequence):
        return True
    for keyword in ("StudyDescription", "SeriesDescription", "ProtocolName"):
        words = _NO_CONTRAST.sub(" ", _text(header, keyword).lower())
        if _CONTRAST_WORDS.search(words):
            return True
    return False


def _identifiers(headers: Sequence[Dataset]) -> Identifiers:
    names: list[str] = []
    ids: list[str] = []
    for header in headers:
        for keyword in ("PatientName", "OtherPatientNames", "PatientBirthName"):
            for name in _values(header, keyword):
                names.extend(part for part in re.split(r"[\^=\s,]+", name) if _letters(part) >= 2)
        ids.extend(_values(header, "PatientID") + _values(header, "OtherPatientIDs"))
        if "OtherPatientIDsSequence" in header:
            ids.extend(_text(item, "PatientID") for item in header.OtherPatientIDsSequence)
    dates = (_text(header, "PatientBirthDate") for header in headers)
    return Identifiers(
        names=_distinct(names),
        ids=_distinct(ids),
        accessions=_distinct(_text(header, "AccessionNumber") for header in headers),
        birth_dates=_distinct(date for date in dates if _is_date(date)),
    )


def _letters(text: str) -> int:
    return sum(char.isalpha() for char in text)


def _is_date(text: str) -> bool:
    match = _DATE.match(text)
    return match is not None and 1 <= int(match.group(2)) <= 12 and 1 <= int(match.group(3)) <= 31
