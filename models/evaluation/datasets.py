"""Reading evaluation sets: VQA files in the VQA-RAD, SLAKE and PathVQA layouts, and report pairs.

VQA layouts (a JSON list of objects, or JSON Lines; images in a folder):

================  ==============  =========  ======================================  ================
layout            image key       id key     closed-ended when                       language
================  ==============  =========  ======================================  ================
``vqa-rad``       ``image_name``  ``qid``    ``answer_type`` is ``CLOSED``           English
``slake``         ``img_name``    ``qid``    ``answer_type`` is ``CLOSED``           ``q_lang``
``pathvqa``       ``image``       ``id``     ``answer_type`` is yes/no or closed;    English
                                             without one, the answer is yes or no
================  ==============  =========  ======================================  ================

VQA-RAD is ``VQA_RAD Dataset Public.json`` (also ``question_type``, ``phrase_type`` ...); SLAKE is
``train.json``/``validate.json``/``test.json`` with ``img_name`` such as ``xmlab0/source.jpg`` under
``imgs/``; PathVQA conversions name the image with or without its extension.  ``auto`` picks the
layout from the first object's keys.  Every image is checked before any model runs; an image path
that leaves the image folder is refused.

Report pairs (a JSON list or JSON Lines): objects with ``reference`` (also ``report``) and either
``draft`` (also ``prediction``), a text to score as is, or ``image``/``images``, file names to draft
a report from; or two-item lists ``[draft, reference]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

#: The VQA layouts read here.
VQA_FORMATS = ("vqa-rad", "slake", "pathvqa")
#: Tried, in order, for a PathVQA image named without its extension.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Default image folders tried beside the JSON file, in order (the JSON file's own folder last).
IMAGE_FOLDERS = ("images", "imgs")

_IMAGE_KEY = {"vqa-rad": "image_name", "slake": "img_name", "pathvqa": "image"}
_CLOSED_TYPES = frozenset({"closed", "yes/no", "yes_no", "yesno", "close"})
_OPEN_TYPES = frozenset({"open", "other", "open-ended", "number", "free"})


class DatasetError(ValueError):
    """An evaluation file cannot be used; the message names the file, the item and what is wrong."""


@dataclass(frozen=True)
class VqaItem:
    """One question about one image.

    Attributes
    ----------
    item_id : str
        The item's id in its file (``qid``/``id``, else its position).
    image : Path
        The image file (checked to exist).
    question, answer : str
        The question and the reference answer.
    closed : bool
        Closed-ended (yes/no or a choice) rather than open-ended.
    language : str
        ``en``, or the SLAKE ``q_lang``.
    """

    item_id: str
    image: Path
    question: str
    answer: str
    closed: bool
    language: str = "en"


@dataclass(frozen=True)
class VqaSet:
    """A VQA file as read.

    Attributes
    ----------
    name : str
        The file's name without its suffix.
    layout : str
        One of :data:`VQA_FORMATS`.
    items : tuple of VqaItem
        The items kept (language filter and limit applied).
    skipped_language : int
        Items left out for their language.
    """

    name: str
    layout: str
    items: tuple[VqaItem, ...]
    skipped_language: int = 0


@dataclass(frozen=True)
class ReportPair:
    """A reference report and either a draft text or the images to draft one from.

    Attributes
    ----------
    item_id : str
        The pair's ``id`` (also ``study``), else its position.
    reference : str
        The reference report text.
    draft : str or None
        A draft to score as is; None when the model drafts it from ``images``.
    images : tuple of Path
        The images to draft from (checked to exist).
    """

    item_id: str
    reference: str
    draft: str | None
    images: tuple[Path, ...] = ()


def read_records(path: Path) -> list[Any]:
    """Read a JSON list, or JSON Lines, from a file.

    Raises
    ------
    DatasetError
        The file is missing, unreadable, not JSON, or not a list.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole:
        document = _json_lines(path, text, whole)
    if isinstance(document, Mapping) and len(document) == 1:
        (document,) = document.values()  # {"data": [...]}
    if not isinstance(document, list):
        raise DatasetError(f"{path}: expected a JSON list of items (or JSON Lines), found {type(document).__name__}")
    if not document:
        raise DatasetError(f"{path}: no items")
    return document


def _json_lines(path: Path, text: str, whole: json.JSONDecodeError) -> list[Any]:
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) < 2:
        raise DatasetError(f"{path}: not valid JSON ({whole.msg} at line {whole.lineno} column {whole.colno})")
    records = []
    for number, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path}: neither JSON nor JSON Lines ({exc.msg} at line {number} column {exc.colno})"
            ) from None
    return records


def detect_layout(record: Any) -> str:
    """Tell the VQA layout (one of :data:`VQA_FORMATS`) from a file's first record's keys.

    Raises
    ------
    DatasetError
        No known layout has these keys.
    """
    keys = set(record) if isinstance(record, Mapping) else set()
    if "img_name" in keys or "q_lang" in keys:
        return "slake"
    if "image_name" in keys:
        return "vqa-rad"
    if "image" in keys:
        return "pathvqa"
    raise DatasetError(
        "cannot tell the layout: expected image_name (VQA-RAD), img_name (SLAKE) or image (PathVQA) "
        f"among the keys {sorted(map(str, keys))}; give --format"
    )


def default_image_folder(path: Path) -> Path:
    """Return ``images/`` or ``imgs/`` beside the JSON file when there is one, else the file's folder."""
    for name in IMAGE_FOLDERS:
        if (path.parent / name).is_dir():
            return path.parent / name
    return path.parent


def resolve_image(folder: Path, name: Any, *, where: str, try_suffixes: bool = False) -> Path:
    """Return an existing image file inside a folder.

    Parameters
    ----------
    name : Any
        The relative file name from the record.
    where : str
        Names the file and item in errors.
    try_suffixes : bool
        Also try :data:`IMAGE_SUFFIXES` when the name has no file.

    Raises
    ------
    DatasetError
        The name is empty, absolute, leaves the folder, or no such file exists.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"{where}: no image file name")
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise DatasetError(f"{where}: image {name!r} is outside the image folder")
    candidate = folder.joinpath(*relative.parts)
    candidates = [candidate]
    if try_suffixes and not candidate.suffix:
        candidates += [candidate.with_name(candidate.name + suffix) for suffix in IMAGE_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"{where}: image {name!r} not found in {folder}")


def _closed(layout: str, record: Mapping[str, Any], answer: str, where: str) -> bool:
    kind = record.get("answer_type")
    if kind is None:
        if layout == "pathvqa":
            return answer.strip().casefold() in {"yes", "no"}
        raise DatasetError(f"{where}: no answer_type (CLOSED or OPEN)")
    value = str(kind).strip().casefold()
    if value in _CLOSED_TYPES:
        return True
    if value in _OPEN_TYPES:
        return False
    raise DatasetError(f"{where}: unknown answer_type {kind!r} (expected CLOSED or OPEN)")


def _text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise DatasetError(f"{where}: no {key}")
    text = str(value).strip()
    if not text:
        raise DatasetError(f"{where}: empty {key}")
    return text


def load_vqa(
    path: Path,
    *,
    image_folder: Path | None = None,
    layout: str = "auto",
    language: str = "en",
    limit: int | None = None,
) -> VqaSet:
    """Read a VQA file (JSON or JSON Lines) and check its images.

    Parameters
    ----------
    image_folder : Path, optional
        Where the images are (default: :func:`default_image_folder`).
    layout : str
        ``auto`` or one of :data:`VQA_FORMATS`.
    language : str
        Keep items in this language (SLAKE ``q_lang``); ``all`` keeps every item.
    limit : int, optional
        Keep at most this many items (the first ones, after the language filter).

    Raises
    ------
    DatasetError
        The file, an item or an image is unusable; the message says which.
    """
    records = read_records(path)
    chosen = detect_layout(records[0]) if layout == "auto" else layout
    if chosen not in VQA_FORMATS:
        raise DatasetError(f"unknown format {layout!r}: use auto, {', '.join(VQA_FORMATS)}")
    folder = image_folder if image_folder is not None else default_image_folder(path)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    items: list[VqaItem] = []
    skipped = 0
    for index, record in enumerate(records):
        if limit is not None and len(items) >= limit:
            break
        where = f"{path.name} item {index + 1}"
        if not isinstance(record, Mapping):
            raise DatasetError(f"{where}: expected an object, found {type(record).__name__}")
        item_language = str(record.get("q_lang", "en")).strip().casefold() or "en"
        if language != "all" and item_language != language:
            skipped += 1
            continue
        item_id = str(record.get("qid", record.get("id", record.get("question_id", index + 1))))
        where = f"{path.name} item {item_id}"
        answer = _text(record, "answer", where)
        image = resolve_image(folder, record.get(_IMAGE_KEY[chosen]), where=where, try_suffixes=chosen == "pathvqa")
        closed = _closed(chosen, record, answer, where)
        items.append(VqaItem(item_id, image, _text(record, "question", where), answer, closed, item_language))
    if not items:
        raise DatasetError(f"{path}: no items in language {language!r} ({skipped} in other languages; see --language)")
    return VqaSet(path.stem, chosen, tuple(items), skipped)


def _pick(record: Mapping[str, Any], names: Iterable[str]) -> Any:
    return next((record[name] for name in names if record.get(name) is not None), None)


def load_report_pairs(path: Path, *, image_folder: Path | None = None, limit: int | None = None) -> list[ReportPair]:
    """Read report pairs (JSON or JSON Lines), in file order, and check their images.

    Parameters
    ----------
    image_folder : Path, optional
        Where the images are (default: :func:`default_image_folder`).
    limit : int, optional
        Keep at most this many pairs.

    Raises
    ------
    DatasetError
        The file, a pair or an image is unusable; the message says which.
    """
    records = read_records(path)
    folder = image_folder if image_folder is not None else default_image_folder(path)
    pairs: list[ReportPair] = []
    for index, record in enumerate(records[:limit] if limit is not None else records):
        where = f"{path.name} item {index + 1}"
        if isinstance(record, list):
            if len(record) != 2 or not all(isinstance(text, str) for text in record):
                raise DatasetError(f"{where}: a pair of texts is a list [draft, reference]")
            pairs.append(ReportPair(str(index + 1), record[1], record[0]))
            continue
        if not isinstance(record, Mapping):
            raise DatasetError(f"{where}: expected an object or a [draft, reference] list")
        item_id = str(_pick(record, ("id", "study", "study_id")) or index + 1)
        where = f"{path.name} item {item_id}"
        reference = _pick(record, ("reference", "report", "reference_report"))
        if not isinstance(reference, str) or not reference.strip():
            raise DatasetError(f"{where}: no reference report text (key reference)")
        draft = _pick(record, ("draft", "prediction", "candidate"))
        if draft is not None and not isinstance(draft, str):
            raise DatasetError(f"{where}: draft must be a text")
        names = _pick(record, ("images", "image"))
        names = [names] if isinstance(names, str) else names
        if draft is None and not names:
            raise DatasetError(f"{where}: give a draft text or the image(s) to draft from")
        if names is not None and not isinstance(names, list):
            raise DatasetError(f"{where}: images must be a list of file names")
        images = tuple(resolve_image(folder, name, where=where) for name in names or ())
        if images and not folder.is_dir():
            raise DatasetError(f"image folder {folder} does not exist")
        pairs.append(ReportPair(item_id, reference, draft, images))
    return pairs
