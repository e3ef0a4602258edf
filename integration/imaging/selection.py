"""Which series, slices and frames of a study go to the model, and as which images.

:func:`prepare_study` reads only the headers of a study's files, drops what
is not an image for the model (reports, presentation states, RT objects,
documents, waveforms, raw data, localizers ...), picks series with the first
:class:`~integration.imaging.routing.RoutingRule` that accepts one, sorts the
slices along the slice normal and samples them evenly.  Only the chosen frames
are then decoded, windowed, fitted and padded to square.  Each
:class:`ModelImage` records exactly which SOP instances and frames it shows
(:class:`Evidence`).

Nothing that identifies the patient goes into a label, an error or a log
message: only UIDs, series numbers, modality, counts and reasons.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from integration.imaging.frames import fit, pad_to_square, render_frame
from integration.imaging.instances import Instance, read_instances, skip_reason
from integration.imaging.pixels import Frame, ImageArray, UndecodableImage, decode_frame
from integration.imaging.referral import read_question
from integration.imaging.routing import DEFAULT_RULES, RoutingRule
from integration.imaging.slices import Series, SeriesFrame, even_sample, group_series, series_frames, series_order
from integration.imaging.windows import WINDOW_PRESETS, Window

logger = logging.getLogger(__name__)


class NoImages(ValueError):
    """Nothing in the study is an image for the model; ``skipped`` says why for each instance.

    Parameters
    ----------
    message : str
        What happened, with the skip reasons summarised.
    skipped : sequence of (str, str)
        The skipped instances: SOP Instance UID (or file name) and reason.
    """

    def __init__(self, message: str, skipped: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.skipped = list(skipped)


class NoRoutingRule(NoImages):
    """The study has images, but no routing rule accepts any of its series."""


@dataclass(frozen=True)
class Evidence:
    """One frame the model saw.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid, series_uid : str
        Identity of the instance.
    frame : int
        1-based frame number, as in DICOM.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    frame: int


@dataclass(frozen=True, eq=False)
class ModelImage:
    """One image as the model receives it.

    Attributes
    ----------
    pixels : numpy.ndarray
        uint8 RGB, square, shape (side, side, 3); read-only.
    evidence : tuple of Evidence
        The frames shown, in order (row by row for a montage).
    window : str or None
        The window used (a preset name, ``"header"``, ``"voi_lut"``, ``"auto"``,
        ``"native"``), None for colour images.
    label : str
        A short description without patient data, e.g.
        ``"CT series 3, slice 40/300, lung window"``.
    """

    pixels: ImageArray
    evidence: tuple[Evidence, ...]
    window: str | None
    label: str


@dataclass
class PreparedStudy:
    """The images of a study, ready for the model, and how they were chosen.

    Attributes
    ----------
    images : list of ModelImage
        In the order they are given to the model.
    modality : str or None
        Modality of the chosen series.
    body_part : str or None
        Body region (or Body Part Examined) of the chosen series.
    series_uids : list of str
        The series the images come from, in order of first use.
    skipped : list of (str, str)
        SOP Instance UID (or file name, for unreadable files) and the reason it was left out.
    rule : RoutingRule
        The rule used.
    timings : dict of str to float
        Seconds spent in ``read``, ``select``, ``decode``, ``preprocess`` and ``total``.
    clinical_question : str or None
        The referrer's question from the first image instance's header (see
        :mod:`integration.imaging.referral`): untrusted, cleaned and capped; patient data, never logged.
    """

    images: list[ModelImage]
    modality: str | None
    body_part: str | None
    series_uids: list[str]
    skipped: list[tuple[str, str]]
    rule: RoutingRule
    timings: dict[str, float] = field(default_factory=dict)
    clinical_question: str | None = None


@dataclass(frozen=True)
class _ImagePlan:
    """One model image to make: its frames (tiles) and its window."""

    tiles: tuple[SeriesFrame, ...]
    window: Window | None


def prepare_study(
    files: Sequence[Path],
    *,
    calling_ae: str | None = None,
    rules: Sequence[RoutingRule] = DEFAULT_RULES,
    max_images: int | None = None,
    image_size: int | None = 1024,
) -> PreparedStudy:
    """Choose and prepare the images of one study for the model.

    Returns the images, how they were chosen, and the clinical question of the first image instance.

    Parameters
    ----------
    calling_ae : str, optional
        The calling AE title the study came from (for rules that name one).
    rules : sequence of RoutingRule
        Routing rules; the first that accepts a series of the study is used.
    max_images : int, optional
        Number of images, overriding the rule's ``max_images`` (and capping a
        ``whole_series`` rule): the model's limit.
    image_size : int or None
        Longest side of an image, in pixels, before padding to square: larger
        images are shrunk to it, smaller ones are kept (a montage is made this
        size).  None keeps the native size.

    Raises
    ------
    NoImages
        If nothing in the study is an image for the model, or nothing chosen could be decoded.
    NoRoutingRule
        If no rule accepts any series of the study.
    ValueError
        If ``max_images`` or ``image_size`` is not positive.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be positive, not {max_images}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, not {image_size}")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with _timed(timings, "read"):
        instances, skipped = read_instances(files)
    with _timed(timings, "select"):
        images = _image_instances(instances, skipped)
        if not images:
            raise NoImages(_summary(f"no image for the model among {len(files)} file(s)", skipped), skipped)
        rule, chosen = choose_series(group_series(images), rules, calling_ae)
        plans = _plan_images(chosen, rule, max_images)
        question = read_question(images[0].path)
    with _timed(timings, "decode"):
        frames = _decode_frames(plans, skipped)
    with _timed(timings, "preprocess"):
        model_images = [image for plan in plans if (image := _make_image(plan, frames, rule, image_size))]
    timings["total"] = time.perf_counter() - started
    if not model_images:
        raise NoImages(_summary("none of the chosen frames could be decoded", skipped), skipped)
    prepared = PreparedStudy(
        images=model_images,
        modality=chosen[0].modality,
        body_part=chosen[0].region,
        series_uids=_unique(e.series_uid for image in model_images for e in image.evidence),
        skipped=skipped,
        rule=rule,
        timings=timings,
        clinical_question=question,
    )
    logger.info(
        "prepared %d image(s) from series %s with rule %r (%d instance(s) skipped) in %.3f s",
        len(model_images),
        ", ".join(prepared.series_uids),
        rule.name,
        len(skipped),
        timings["total"],
    )
    return prepared


def choose_series(
    series: Sequence[Series], rules: Sequence[RoutingRule], calling_ae: str | None
) -> tuple[RoutingRule, list[Series]]:
    """Find the first rule (in order) that accepts a series, and the series it takes.

    A rule takes the accepted series with the most frames (ties: the lower Series Number, then the
    UID), or, with ``across_series``, every accepted series, in :func:`group_series` order.

    Raises
    ------
    NoRoutingRule
        If no rule accepts any series.
    """
    for rule in rules:
        accepted = [s for s in series if rule.accepts(s, calling_ae)]
        if accepted:
            if rule.across_series:
                return rule, accepted
            return rule, [min(accepted, key=lambda s: (-s.frames, *series_order(s)))]
    modalities = sorted({s.modality or "?" for s in series})
    raise NoRoutingRule(
        f"no routing rule accepts the study's {len(series)} image series (modalities {', '.join(modalities)})"
    )


def _image_instances(instances: Sequence[Instance], skipped: list[tuple[str, str]]) -> list[Instance]:
    """Return the instances that are images for the model; add the others to ``skipped``."""
    images = []
    for instance in instances:
        reason = skip_reason(instance)
        if reason is None:
            images.append(instance)
        else:
            skipped.append((instance.sop_instance_uid, reason))
            logger.debug("skipped instance %s: %s", instance.sop_instance_uid, reason)
    return images


def _plan_images(chosen: Sequence[Series], rule: RoutingRule, max_images: int | None) -> list[_ImagePlan]:
    """Sample the chosen series' frames and group them into images, one per window.

    ``max_images`` (the caller's override) also caps a whole-series rule.
    """
    windows: list[Window | None] = [WINDOW_PRESETS[name] for name in rule.windows] or [None]
    tiles_per_image = rule.montage_grid**2 if rule.montage else 1
    frames = [frame for series in chosen for frame in series_frames(series)]
    if not rule.whole_series or max_images is not None:
        limit = max_images or rule.max_images
        windows = windows[:limit]
        frames = even_sample(frames, (limit // len(windows)) * tiles_per_image)
    groups = [tuple(frames[i : i + tiles_per_image]) for i in range(0, len(frames), tiles_per_image)]
    return [_ImagePlan(group, window) for window in windows for group in groups]


def _decode_frames(plans: Sequence[_ImagePlan], skipped: list[tuple[str, str]]) -> dict[tuple[str, int], Frame]:
    """Read each needed file once and decode its needed frames; record the failures in ``skipped``."""
    needed: dict[str, tuple[Instance, set[int]]] = {}
    for plan in plans:
        for tile in plan.tiles:
            needed.setdefault(tile.instance.sop_instance_uid, (tile.instance, set()))[1].add(tile.frame)
    decoded: dict[tuple[str, int], Frame] = {}
    for uid, (instance, numbers) in needed.items():
        try:
            ds = _read_complete(instance.path)
            for number in sorted(numbers):
                decoded[uid, number] = decode_frame(ds, number - 1)
        except UndecodableImage as exc:
            skipped.append((uid, f"undecodable: {exc}"))
            logger.warning("instance %s cannot be shown: %s", uid, exc)
    return decoded


def _read_complete(path: Path) -> Dataset:
    """Read a whole file, pixel data included."""
    try:
        return pydicom.dcmread(path, force=True)
    except Exception as exc:  # the file may have changed or be damaged past its header
        raise UndecodableImage(f"the file cannot be read again ({type(exc).__name__})") from exc


def _make_image(
    plan: _ImagePlan, frames: dict[tuple[str, int], Frame], rule: RoutingRule, image_size: int | None
) -> ModelImage | None:
    """Render one planned image from the decoded frames (None when none of its frames decoded)."""
    tiles = [tile for tile in plan.tiles if (tile.instance.sop_instance_uid, tile.frame) in frames]
    if not tiles:
        return None
    rendered = [render_frame(frames[tile.instance.sop_instance_uid, tile.frame], plan.window) for tile in tiles]
    if rule.montage:
        pixels = _montage([r.pixels for r in rendered], rule.montage_grid, image_size)
    else:
        single = rendered[0].pixels
        pixels = pad_to_square(fit(single, image_size) if image_size else single)
    pixels.setflags(write=False)
    window = plan.window.name if plan.window else rendered[0].window
    montage = f"{rule.montage_grid}x{rule.montage_grid}" if rule.montage else None
    evidence = tuple(
        Evidence(t.instance.sop_class_uid, t.instance.sop_instance_uid, t.instance.series_uid, t.frame) for t in tiles
    )
    return ModelImage(pixels, evidence, window, _label(tiles, window, montage))


def _montage(images: Sequence[ImageArray], grid: int, image_size: int | None) -> ImageArray:
    """Tile images row by row into a square grid; each is padded to square and scaled to its tile."""
    tile = (image_size // grid) if image_size else max(max(image.shape[:2]) for image in images)
    tile = max(tile, 1)
    canvas = np.zeros((tile * grid, tile * grid, 3), dtype=np.uint8)
    for index, image in enumerate(images[: grid * grid]):
        row, column = divmod(index, grid)
        canvas[row * tile : (row + 1) * tile, column * tile : (column + 1) * tile] = fit(
            pad_to_square(image), tile, upscale=True
        )
    return canvas


def _label(tiles: Sequence[SeriesFrame], window: str | None, montage: str | None) -> str:
    """Describe an image without patient data: modality, series, places, montage, window."""
    parts = []
    for series_uid in _unique(t.instance.series_uid for t in tiles):
        in_series = [t for t in tiles if t.instance.series_uid == series_uid]
        first = in_series[0]
        modality = f"{first.instance.modality} " if first.instance.modality else ""
        number = first.instance.series_number
        name = f"{modality}series {number}" if number is not None else f"{modality}series (no number)"
        kind = first.kind if len(in_series) == 1 else f"{first.kind}s"
        places = ", ".join(str(t.place) for t in in_series)
        parts.append(f"{name}, {kind} {places}/{first.total}")
    label = "; ".join(parts)
    if montage:
        label += f" ({montage} montage)"
    if window:
        label += f", {_window_phrase(window)}"
    return label


def _window_phrase(window: str) -> str:
    """Return how a window name reads in a label."""
    phrases = {"voi_lut": "header VOI LUT", "native": "native grey levels", "auto": "automatic window"}
    return phrases.get(window, f"{window.replace('_', ' ')} window")


def _summary(message: str, skipped: Sequence[tuple[str, str]]) -> str:
    """Append the skip reasons, counted, to a message."""
    counts = Counter(reason for _, reason in skipped)
    if not counts:
        return message
    reasons = "; ".join(f"{count} x {reason}" for reason, count in counts.most_common())
    return f"{message}: {reasons}"


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds spent in a block under ``name``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - started


def _unique(values: Iterator[str] | Sequence[str]) -> list[str]:
    """Return the distinct values in order of first appearance."""
    return list(dict.fromkeys(values))
