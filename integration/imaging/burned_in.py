"""Burned-in text in an image: read it with tesseract, say which words look identifying, black them out.

Images bound for a model server outside the trust boundary (:mod:`worker.outbound`) may carry text in
their pixels that no header flag announces: an ultrasound's or a secondary capture's patient banner, a
scanned request form, a photo of a wristband.  :func:`find_burned_in_text` reads the words of an image
with Debian's tesseract (through pytesseract's ``image_to_data``: each word with its box and confidence)
and :func:`classify` marks those that look like

- a **date**: numeric (``12/03/2024``, ``2024-03-12``, ``1.3.24``), DICOM (``20240312``) or written
  (``12 Mar 2024``, ``12-MAR-2024``, ``March 12, 2024``; English month names);
- an **id**: a token with four digits or more (an MRN, an accession, a phone number), unless it is a
  measurement with its unit (``1500mm``, ``3.5MHz``) or a window setting (``W:1500``); a bare four-digit
  number errs on the safe side and counts; or one of the study's known identifiers;
- a **name**: a component of the study's person names (the caller passes the patient's and physicians'
  names from the header; OCR slips of one letter are forgiven in components of five letters or more),
  capitalised words after a ``Name``/``Patient``/``Pt`` label, or a DICOM-like ``SURNAME^GIVEN`` (the
  caret is often read as a quote, an asterisk or a tilde).

:func:`redact` blacks out the boxes of the words it is given.  Single letters (an ``L`` marker), short
numbers (tile numbers, slice numbers) and window names are not identifying.

Reading: the image is read in grey (a mostly dark one, white text on black as on most modalities, with
its darker half flattened and inverted), then, where there are some, its near-white (or full yellow,
green) pixels alone, since an overlay over a bright body (a lung window) is lost in the first reading;
a small image (longest side under :data:`UPSCALE_BELOW`) is read at twice its size, which tesseract
needs for text under about 12 pixels; page segmentation ``--psm 11`` (sparse text: words scattered in
corners, no page layout).  Words are patient data: nothing here logs them, and
:class:`OcrWord` does not show its text in its ``repr``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar

import numpy as np
import pytesseract  # type: ignore[import-untyped]
from PIL import Image, ImageDraw, ImageOps

log = logging.getLogger(__name__)

#: Tesseract page segmentation mode: sparse text, as much as possible in no particular order.
PAGE_SEGMENTATION = 11
#: Seconds one image's OCR may take before it counts as unreadable.
OCR_TIMEOUT_S = 30.0
#: Images whose longest side is below this are read at twice their size.
UPSCALE_BELOW = 800
#: A channel value from which a pixel counts as a bright overlay (read again on its own).
BRIGHT = 240
#: Share of bright pixels for which that second reading is made (none: nothing to read; most: a white page).
BRIGHT_SHARE = (0.0005, 0.5)
#: Pixels added around a redacted word's box.
REDACT_PADDING = 2
#: Tesseract language codes as settings name them (``eng``, ``eng+deu``).
LANGUAGES = re.compile(r"^[a-z_]{3,16}(\+[a-z_]{3,16}){0,4}$")

_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
#: Dates in text: numeric, DICOM DA and written forms (English month names).
DATES = re.compile(
    r"\b(?:\d{1,4}[./-]\d{1,2}[./-]\d{1,4}"  # 2024-03-01, 01/03/2024, 1.3.24
    r"|(?:19|20)\d{6}"  # 20240301 (DICOM DA)
    rf"|\d{{1,2}}(?:st|nd|rd|th)?[\s./-]*{_MONTHS}(?:,?[\s./-]*\d{{2,4}})?"  # 1 March 2024, 01-MAR-2024
    rf"|{_MONTHS}[\s./-]*\d{{1,2}}(?:st|nd|rd|th)?(?:,?[\s./-]*\d{{2,4}})?"  # March 1, 2024
    rf"|{_MONTHS}[\s./-]*(?:19|20)\d{{2}})\b",  # March 2024
    re.IGNORECASE,
)
#: Words that label a person name on an image.
NAME_LABELS = frozenset({"name", "patient", "patients", "pt", "pat", "pname", "patname"})
#: Most capitalised words taken as the name after a label.
_NAME_WORDS_AFTER_LABEL = 4
#: ``SURNAME^GIVEN`` with the caret as tesseract may read it.
#: What tesseract reads a caret as, besides itself: quotes, an asterisk, a trade mark sign, a tilde, a degree sign.
_CARETS = '\\^\u201c\u201d\u2019"*\u2122~`\u00b0'
_PERSON_NAME = re.compile(rf"\b[A-Z][A-Za-z'-]+ ?[{_CARETS}] ?[A-Z][A-Za-z'-]+")
_LETTERS = re.compile(r"[^\W\d_]+")
#: Numbers with a unit (``1500mm``, ``3.5MHz``) or a window setting (``W:1500``, ``WL=-600``): not ids.
_MEASUREMENT = re.compile(
    r"(?:(?:W|L|C|WW|WL|WC)[:=]-?\d+(?:[.,]\d+)?)"
    r"|(?:-?\d+(?:[.,]\d+)?(?:mm|cm|kv|kvp|mas|ma|hz|khz|mhz|db|fps|ms|cm/s|mm/s|%))",
    re.IGNORECASE,
)
_NAMELIKE = re.compile(rf"^[A-Z][^\W\d_]*(?:['{_CARETS}-][^\W\d_]+)*$")
_EDGE_PUNCTUATION = " \t,.;:()[]{}<>|!?"

_Image = TypeVar("_Image", Image.Image, np.ndarray)


class TextKind(StrEnum):
    """What an identifying word looks like."""

    NAME = "name"
    ID = "id"
    DATE = "date"


class OcrUnavailable(RuntimeError):
    """Tesseract could not read the image: not installed, failed or timed out (the message holds no text read)."""


@dataclass(frozen=True)
class Box:
    """A word's bounding box in the image's pixels.

    Attributes
    ----------
    left, top : int
        Top left corner (0-based, not negative).
    width, height : int
        Positive.
    """

    left: int
    top: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.left < 0 or self.top < 0:
            raise ValueError(f"a box starts inside the image, not at ({self.left}, {self.top})")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"a box has a positive size, not {self.width}x{self.height}")

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.left + self.width

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.top + self.height

    def shrunk(self, factor: int) -> Box:
        """The box in an image ``factor`` times smaller (covering every pixel it touches)."""
        if factor < 1:
            raise ValueError(f"factor must be positive, not {factor}")
        left, top = self.left // factor, self.top // factor
        return Box(left, top, max(1, -(-self.right // factor) - left), max(1, -(-self.bottom // factor) - top))


@dataclass(frozen=True)
class OcrWord:
    """One word tesseract read (its text is patient data: never logged, never in the ``repr``).

    Attributes
    ----------
    text : str
        The word as read, not empty.
    box : Box
        Where it is, in the pixels of the image given.
    confidence : float
        Tesseract's confidence, 0 to 100.
    line : tuple of (int, int, int)
        Block, paragraph and line numbers: words of one line are read together (dates of three words).
    kind : TextKind or None
        What it looks like (:func:`classify`); None: not identifying.
    """

    text: str
    box: Box
    confidence: float
    line: tuple[int, int, int] = (0, 0, 0)
    kind: TextKind | None = None

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("a word has text")
        if not 0.0 <= self.confidence <= 100.0:
            raise ValueError(f"confidence is between 0 and 100, not {self.confidence}")
        if self.kind is not None and not isinstance(self.kind, TextKind):
            raise ValueError(f"kind is a TextKind or None, not {self.kind!r}")

    def __repr__(self) -> str:
        return f"OcrWord(<{len(self.text)} characters>, {self.box}, confidence={self.confidence}, kind={self.kind})"


@dataclass(frozen=True)
class BurnedInText:
    """The words read in one image and which of them look identifying.

    Attributes
    ----------
    words : tuple of OcrWord
        Every word read, classified.
    seconds : float
        Time OCR and classification took.
    """

    words: tuple[OcrWord, ...]
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"seconds are not negative, not {self.seconds}")

    @property
    def identifying(self) -> tuple[OcrWord, ...]:
        """The words that look like a name, id or date."""
        return tuple(word for word in self.words if word.kind is not None)

    @property
    def kinds(self) -> tuple[TextKind, ...]:
        """The kinds of identifying text found, in the order name, id, date."""
        found = {word.kind for word in self.words}
        return tuple(kind for kind in TextKind if kind in found)


def read_words(
    image: Image.Image | np.ndarray,
    *,
    languages: str = "eng",
    timeout: float = OCR_TIMEOUT_S,
) -> tuple[OcrWord, ...]:
    """Read the words of an image with tesseract (not classified).

    Parameters
    ----------
    image : PIL.Image.Image or numpy.ndarray
        Grey or RGB(A); uint8 for an array.
    languages : str
        Tesseract languages (``eng``, ``eng+deu``); their traineddata must be installed.
    timeout : float
        Seconds before tesseract is stopped.

    Returns
    -------
    tuple of OcrWord
        In reading order, boxes in the pixels of ``image``.

    Raises
    ------
    OcrUnavailable
        Tesseract is not installed, failed (a language not installed) or timed out.
    ValueError
        ``languages`` is not a list of language codes, or the image is empty.
    """
    if not LANGUAGES.fullmatch(languages):
        raise ValueError("languages are tesseract codes joined by '+', e.g. 'eng' or 'eng+deu'")
    words: list[OcrWord] = []
    for number, (prepared, scale) in enumerate(_passes(_as_pil(image))):
        for word in _tesseract(prepared, scale, languages, timeout):
            line = (number * 1000 + word.line[0], *word.line[1:])
            if not any(_same_word(word, earlier) for earlier in words):
                words.append(replace(word, line=line))
    return tuple(words)


def _tesseract(image: Image.Image, scale: int, languages: str, timeout: float) -> list[OcrWord]:
    """One tesseract run over a prepared image; boxes ``scale`` times smaller (the original's pixels)."""
    try:
        data = pytesseract.image_to_data(
            image,
            lang=languages,
            config=f"--psm {PAGE_SEGMENTATION}",
            output_type=pytesseract.Output.DICT,
            timeout=timeout,
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise OcrUnavailable("tesseract is not installed (Debian package tesseract-ocr)") from exc
    except pytesseract.TesseractError as exc:
        raise OcrUnavailable(f"tesseract failed (status {exc.status})") from exc
    except RuntimeError as exc:  # pytesseract's timeout
        raise OcrUnavailable(f"tesseract did not finish in {timeout:g} s") from exc
    words = []
    for index, text in enumerate(data["text"]):
        confidence = float(data["conf"][index])
        width, height = int(data["width"][index]), int(data["height"][index])
        if not str(text).strip() or confidence < 0 or width < 1 or height < 1:
            continue
        box = Box(max(0, int(data["left"][index])), max(0, int(data["top"][index])), width, height).shrunk(scale)
        line = (int(data["block_num"][index]), int(data["par_num"][index]), int(data["line_num"][index]))
        words.append(OcrWord(str(text).strip(), box, min(confidence, 100.0), line))
    return words


def classify(
    words: Sequence[OcrWord], names: Iterable[str] = (), identifiers: Iterable[str] = ()
) -> tuple[OcrWord, ...]:
    """Mark the words that look like a name, an id or a date (see the module docstring).

    Parameters
    ----------
    words : sequence of OcrWord
        As :func:`read_words` returns them (words of one line share :attr:`OcrWord.line`).
    names : iterable of str
        Person names known for the study (DICOM ``Family^Given`` or plain): each component of two
        letters or more is a name wherever it is read.
    identifiers : iterable of str
        Known ids (patient id, accession): a word holding one is an id, however few digits it has.

    Returns
    -------
    tuple of OcrWord
        The same words in the same order, each with its :attr:`~OcrWord.kind` (None where none fits).
    """
    components = _name_components(names)
    known_ids = {key for value in identifiers if len(key := _alnum(value)) >= 3}
    kinds: list[TextKind | None] = [None] * len(words)
    for indices in _lines(words):
        line_words = [words[i] for i in indices]
        for position in _spans(line_words, DATES):
            kinds[indices[position]] = TextKind.DATE
        for position in [*_spans(line_words, _PERSON_NAME), *_after_labels(line_words)]:
            kinds[indices[position]] = kinds[indices[position]] or TextKind.NAME
    for i, word in enumerate(words):
        if kinds[i] is TextKind.DATE:
            continue
        if _looks_like_id(word.text, known_ids):
            kinds[i] = TextKind.ID
        elif kinds[i] is None and _is_known_name(word.text, components):
            kinds[i] = TextKind.NAME
    return tuple(replace(word, kind=kind) for word, kind in zip(words, kinds, strict=True))


def find_burned_in_text(
    image: Image.Image | np.ndarray,
    *,
    names: Iterable[str] = (),
    identifiers: Iterable[str] = (),
    languages: str = "eng",
    timeout: float = OCR_TIMEOUT_S,
) -> BurnedInText:
    """Read an image's words and classify them (:func:`read_words`, then :func:`classify`).

    Raises
    ------
    OcrUnavailable
        Tesseract could not read the image: the caller must treat it as possibly identifying.
    """
    started = time.perf_counter()
    words = classify(read_words(image, languages=languages, timeout=timeout), names, identifiers)
    found = BurnedInText(words, time.perf_counter() - started)
    log.debug("OCR read %d word(s), %d identifying, in %.3f s", len(found.words), len(found.identifying), found.seconds)
    return found


def redact(image: _Image, words: Iterable[OcrWord], *, padding: int = REDACT_PADDING) -> _Image:
    """Black out the boxes of ``words`` (every word given: pass :attr:`BurnedInText.identifying`).

    Parameters
    ----------
    image : PIL.Image.Image or numpy.ndarray
        The image the words were read in; it is not changed.
    words : iterable of OcrWord
        The words to hide.
    padding : int
        Pixels added around each box.

    Returns
    -------
    PIL.Image.Image or numpy.ndarray
        A copy of the same type, shape and mode with the boxes black.
    """
    if padding < 0:
        raise ValueError(f"padding is not negative, not {padding}")
    boxes = [word.box for word in words]
    if isinstance(image, Image.Image):
        out = image.copy()
        draw = ImageDraw.Draw(out)
        black = 0 if len(out.getbands()) == 1 else (0,) * len(out.getbands())
        for box in boxes:
            draw.rectangle(
                (box.left - padding, box.top - padding, box.right - 1 + padding, box.bottom - 1 + padding), fill=black
            )
        return out
    pixels = np.array(image, copy=True)
    rows, columns = pixels.shape[:2]
    for box in boxes:
        top, left = max(0, box.top - padding), max(0, box.left - padding)
        pixels[top : min(rows, box.bottom + padding), left : min(columns, box.right + padding)] = 0
    return pixels


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """The image as Pillow holds it."""
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError("the image is empty")
        return image
    array = np.asarray(image)
    if array.ndim not in (2, 3) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"an image array is (rows, columns[, channels]), not shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"an image array is uint8, not {array.dtype}")
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def _passes(image: Image.Image) -> list[tuple[Image.Image, int]]:
    """The images tesseract reads (dark text on light) and how many times larger than ``image`` they are.

    First the whole image in grey: a mostly dark one (light text on black) with its darker half flattened
    (background noise and redacted boxes are not text) and inverted.  Then, where some but not most pixels
    are near full brightness in a channel (burned-in overlays: white, yellow, green), those pixels alone:
    white text over a bright body in a lung window is lost in the first.
    """
    grey = image.convert("L") if image.mode != "L" else image
    pixels = np.asarray(grey)
    if float(pixels.mean()) < 128:
        grey = ImageOps.invert(Image.fromarray(np.maximum(pixels, np.median(pixels)).astype(np.uint8)))
    bright = np.asarray(image.convert("RGB")).max(axis=2) >= BRIGHT
    passes = [grey]
    if BRIGHT_SHARE[0] <= float(bright.mean()) <= BRIGHT_SHARE[1]:
        passes.append(Image.fromarray(np.where(bright, 0, 255).astype(np.uint8)))
    scale = 2 if max(grey.size) < UPSCALE_BELOW else 1
    if scale > 1:
        size = (grey.width * scale, grey.height * scale)
        passes = [read.resize(size, Image.Resampling.LANCZOS) for read in passes]
    return [(read, scale) for read in passes]


def _same_word(word: OcrWord, other: OcrWord) -> bool:
    """The same text read twice at about the same place (the second pass's copy is dropped)."""
    if word.text.casefold() != other.text.casefold():
        return False
    a, b = word.box, other.box
    overlap_w = min(a.right, b.right) - max(a.left, b.left)
    overlap_h = min(a.bottom, b.bottom) - max(a.top, b.top)
    return overlap_w > 0 and overlap_h > 0 and overlap_w * overlap_h * 2 >= min(a.width * a.height, b.width * b.height)


def _lines(words: Sequence[OcrWord]) -> list[list[int]]:
    """Indices of the words of each line, in order."""
    lines: dict[tuple[int, int, int], list[int]] = {}
    for index, word in enumerate(words):
        lines.setdefault(word.line, []).append(index)
    return list(lines.values())


def _spans(line: Sequence[OcrWord], pattern: re.Pattern[str]) -> set[int]:
    """Positions of the words of a line that a match of ``pattern`` over the line's text touches."""
    starts, text = [], ""
    for word in line:
        starts.append(len(text))
        text += word.text + " "
    hits: set[int] = set()
    for match in pattern.finditer(text):
        for position, (start, word) in enumerate(zip(starts, line, strict=True)):
            if start < match.end() and match.start() < start + len(word.text):
                hits.add(position)
    return hits


def _after_labels(line: Sequence[OcrWord]) -> set[int]:
    """Positions of the capitalised words that follow a name label (``Name: SMITH, JOHN``, ``Pt Jane Doe``)."""
    hits: set[int] = set()
    for position, word in enumerate(line):
        label, _, rest = word.text.partition(":")
        if label.strip(_EDGE_PUNCTUATION).casefold().replace("'s", "") not in NAME_LABELS:
            continue
        if rest.strip(_EDGE_PUNCTUATION) and _NAMELIKE.match(rest.strip(_EDGE_PUNCTUATION)):
            hits.add(position)  # "Name:SMITH"
        taken = 0
        for later in range(position + 1, len(line)):
            text = line[later].text.strip(_EDGE_PUNCTUATION + _CARETS)
            if text.casefold() in NAME_LABELS:
                continue  # "Patient Name:"
            if not text or not _NAMELIKE.match(text) or taken >= _NAME_WORDS_AFTER_LABEL:
                break
            hits.add(later)
            taken += 1
    return hits


def _name_components(names: Iterable[str]) -> set[str]:
    """The casefolded components of person names with two letters or more."""
    parts = (part.strip(".-'") for name in names for part in re.split(r"[\^\s,=]+", name))
    return {part.casefold() for part in parts if len(part) >= 2 and _LETTERS.fullmatch(part)}


def _is_known_name(text: str, components: set[str]) -> bool:
    """Whether a run of letters in the word is a known name component (one OCR slip allowed from five letters)."""
    if not components:
        return False
    for run in [*_LETTERS.findall(text), _alnum(text)]:  # "Kowa1czyk": a digit read for a letter
        folded = run.casefold()
        if folded in components:
            return True
        if len(folded) >= 5 and any(len(c) >= 5 and _within_one_edit(folded, c) for c in components):
            return True
    return False


def _looks_like_id(text: str, known: set[str]) -> bool:
    """A known identifier in it, or four digits or more that are not a measurement or a window setting."""
    key = _alnum(text)
    if key and any(identifier in key for identifier in known):
        return True
    return sum(ch.isdigit() for ch in text) >= 4 and not _MEASUREMENT.fullmatch(text.strip(_EDGE_PUNCTUATION))


def _alnum(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _within_one_edit(a: str, b: str) -> bool:
    """Whether one substitution, insertion or deletion turns ``a`` into ``b`` (or none)."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) <= 1
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))
