"""Which series, slices and frames of a study go to the model, and as which images.

:func:`prepare_study` reads only the headers of a study's files, drops what
is not an image for the model (reports, presentation states, RT objects,
documents, waveforms, raw data ...), leaves out derived and secondary images
(localizers, dose screens, screen captures, scanned documents, reformats) unless
the rule asks for them, picks series with the first
:class:`~integration.imaging.routing.RoutingRule` that accepts one, sorts the
slices along the slice normal and takes the centres of equal segments.  Only
the chosen frames are then decoded, windowed, fitted and padded to square.  Each
:class:`ModelImage` records exactly which SOP instances and frames it shows
(:class:`Evidence`).

How the chosen frames become images is the model's
:data:`~integration.imaging.routing.Presentation`:

- ``"separate"``: one image per slice and window, ``max_images`` (else the rule's) in all;
- ``"montage"``: one image, a grid of the rule's ``max_images`` tiles (at most
  :data:`MONTAGE_MAX_TILES`), slice positions times windows, window by window,
  each tile labelled with its number and window (:mod:`integration.imaging.montage`):
  a single-image model then sees every window of every position at once, where
  one montage per window would be several images again (a study of one frame
  gives that frame alone, unlabelled);
- ``"series"``: every frame of the chosen series, in each of the rule's windows,
  capped by ``max_images`` (as a ``whole_series`` rule).

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
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from integration.imaging.frames import fit, pad_to_square, render_frame
from integration.imaging.instances import Instance, read_instances, skip_reason
from integration.imaging.montage import labelled_montage, montage
from integration.imaging.pixels import Frame, ImageArray, UndecodableImage, decode_frame
from integration.imaging.referral import read_question
from integration.imaging.routing import DEFAULT_RULES, MAX_MONTAGE_GRID, PRESENTATIONS, Presentation, RoutingRule
from integration.imaging.slices import Series, SeriesFrame, even_sample, group_series, series_frames, series_order
from integration.imaging.windows import WINDOW_PRESETS, Window

logger = logging.getLogger(__name__)

#: Derived images a study is read from when it has no original image a rule accepts: a reformat-only export, or
#: images captured on a workstation (Secondary Capture, Conversion Type WSD: nuclear medicine results are often
#: sent so).  Localizers, dose and protocol screens, screenshots and scanned documents never are.
FALLBACK_DERIVED_KINDS = frozenset({"reformat or projection", "secondary capture"})
#: Most tiles of a ``"montage"`` presentation (a 4 x 4 grid).
MONTAGE_MAX_TILES = MAX_MONTAGE_GRID**2


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
    window : str or None
        The window this frame is shown in where its image mixes windows (a ``"montage"`` in
        several windows); None: the image's :attr:`ModelImage.window`.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    frame: int
    window: str | None = None


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
        ``"native"``), None for colour images; that of the first tile when a montage
        mixes windows (each :class:`Evidence` then names its own).
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
    """One model image to make: its frames (tiles), the window of each, and how they are laid out.

    ``grid``: tiles per side of a rule's unlabelled montage (None: one frame); ``labelled``: one
    labelled grid of every tile (the ``"montage"`` presentation).
    """

    tiles: tuple[SeriesFrame, ...]
    windows: tuple[Window | None, ...]
    grid: int | None = None
    labelled: bool = False


def evidence_entries(
    images: Sequence[ModelImage], first: int = 1, prior_study_uid: str | None = None
) -> list[dict[str, Any]]:
    """Return exactly what the model saw, as a draft stores it: one entry per instance frame of each image.

    Each entry: ``image`` (1-based, as numbered in the prompt, from ``first``), SOP class and instance UIDs,
    series UID, ``frame`` (1-based) and the window it was shown in; for a prior study's images
    (``prior_study_uid`` given) also ``study_uid`` and ``prior: true``.
    """
    prior = {"study_uid": prior_study_uid, "prior": True} if prior_study_uid else {}
    return [
        {
            "image": number,
            "sop_class_uid": ev.sop_class_uid,
            "sop_instance_uid": ev.sop_instance_uid,
            "series_uid": ev.series_uid,
            "frame": ev.frame,
            "window": ev.window or image.window,
            **prior,
        }
        for number, image in enumerate(images, start=first)
        for ev in image.evidence
    ]


def prepare_study(
    files: Sequence[Path],
    *,
    calling_ae: str | None = None,
    rules: Sequence[RoutingRule] = DEFAULT_RULES,
    max_images: int | None = None,
    image_size: int | None = 1024,
    presentation: Presentation = "separate",
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
        ``whole_series`` rule or the ``"series"`` presentation): the model's
        limit.  A ``"montage"`` is one image whatever this is.
    image_size : int or None
        Longest side of an image, in pixels, before padding to square: larger
        images are shrunk to it, smaller ones are kept (a montage is made this
        size).  None keeps the native size.
    presentation : {"separate", "montage", "series"}
        How the model is given the images (see the module docstring): the model
        family's ``image_presentation``.

    Raises
    ------
    NoImages
        If nothing in the study is an image for the model, or nothing chosen could be decoded.
    NoRoutingRule
        If no rule accepts any series of the study.
    ValueError
        If ``max_images`` or ``image_size`` is not positive, or ``presentation`` is unknown.
    """
    if presentation not in PRESENTATIONS:
        raise ValueError(f"presentation must be one of {', '.join(PRESENTATIONS)}, not {presentation!r}")
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
        rule, chosen = _route(images, rules, calling_ae, skipped, len(files))
        plans = _plan_images(chosen, rule, max_images, presentation)
        question = read_question(images[0].path)
    with _timed(timings, "decode"):
        frames = _decode_frames(plans, skipped)
    with _timed(timings, "preprocess"):
        model_images = [image for plan in plans if (image := _make_image(plan, frames, image_size))]
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
        "prepared %d image(s) (%s) from series %s with rule %r (%d instance(s) skipped) in %.3f s",
        len(model_images),
        presentation,
        ", ".join(prepared.series_uids),
        rule.name,
        len(skipped),
        timings["total"],
    )
    return prepared


def choose_series(
    series: Sequence[Series],
    rules: Sequence[RoutingRule],
    calling_ae: str | None,
    *,
    with_derived: Sequence[Series] | None = None,
) -> tuple[RoutingRule, list[Series]]:
    """Find the first rule (in order) that accepts a series, and the series it takes.

    A rule takes the accepted series with the most frames (ties: the lower Series Number, then the
    UID), or, with ``across_series``, every accepted series, in :func:`group_series` order.
    ``series`` hold the original images only; ``with_derived`` the same study's series with its
    derived and secondary images too, for rules with ``include_derived`` (None: ``series``).

    Raises
    ------
    NoRoutingRule
        If no rule accepts any series.
    """
    for rule in rules:
        pool = with_derived if rule.include_derived and with_derived is not None else series
        accepted = [s for s in pool if rule.accepts(s, calling_ae)]
        if accepted:
            if rule.across_series:
                return rule, accepted
            return rule, [min(accepted, key=lambda s: (-s.frames, *series_order(s)))]
    modalities = sorted({s.modality or "?" for s in series})
    raise NoRoutingRule(
        f"no routing rule accepts the study's {len(series)} image series (modalities {', '.join(modalities)})"
    )


def _route(
    images: Sequence[Instance],
    rules: Sequence[RoutingRule],
    calling_ae: str | None,
    skipped: list[tuple[str, str]],
    file_count: int,
) -> tuple[RoutingRule, list[Series]]:
    """Choose the rule and series; derived images are left out (added to ``skipped``) unless the rule takes them.

    Raises
    ------
    NoImages
        If every image is derived or secondary and no rule takes those.
    NoRoutingRule
        If no rule accepts any series.
    """
    originals = [i for i in images if i.derived is None]
    derived = [(i.sop_instance_uid, f"{i.derived} (derived or secondary image)") for i in images if i.derived]
    wanted = derived and any(rule.include_derived for rule in rules)
    try:
        rule, chosen = choose_series(
            group_series(originals), rules, calling_ae, with_derived=group_series(images) if wanted else None
        )
    except NoRoutingRule as exc:
        # A study of reformats or workstation captures only is read from them rather than refused
        # (FALLBACK_DERIVED_KINDS); localizers, screens and documents stay out.
        fallback = [i for i in images if i.derived in FALLBACK_DERIVED_KINDS]
        if fallback and not originals:
            try:
                rule, chosen = choose_series(group_series(fallback), rules, calling_ae)
            except NoRoutingRule:
                pass
            else:
                skipped.extend(item for item in derived if item[0] not in {i.sop_instance_uid for i in fallback})
                return rule, chosen
        skipped.extend(derived)
        if not originals:
            message = f"no image for the model among {file_count} file(s) (no rule takes derived images)"
            raise NoImages(_summary(message, skipped), skipped) from exc
        raise NoRoutingRule(str(exc), skipped) from exc
    if not rule.include_derived:
        skipped.extend(derived)
    return rule, chosen


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


def _plan_images(
    chosen: Sequence[Series], rule: RoutingRule, max_images: int | None, presentation: Presentation
) -> list[_ImagePlan]:
    """Sample the chosen series' frames and group them into images, as the presentation asks.

    ``max_images`` (the caller's override) also caps a whole-series rule and a ``"series"`` presentation.
    """
    windows: list[Window | None] = [WINDOW_PRESETS[name] for name in rule.windows] or [None]
    frames = [frame for series in chosen for frame in series_frames(series)]
    if presentation == "montage":
        tiles = min(rule.max_images * (rule.montage_grid**2 if rule.montage else 1), MONTAGE_MAX_TILES)
        windows = windows[:tiles]
        frames = even_sample(frames, tiles // len(windows))
        pairs = [(frame, window) for window in windows for frame in frames]
        # One tile is shown as it is: a burned-in "1" would only hide a corner (a radiograph's side marker).
        return [_ImagePlan(tuple(f for f, _ in pairs), tuple(w for _, w in pairs), labelled=len(pairs) > 1)]
    grid = rule.montage_grid if rule.montage and presentation == "separate" else None
    tiles_per_image = grid**2 if grid else 1
    if (presentation == "separate" and not rule.whole_series) or max_images is not None:
        limit = max_images or rule.max_images
        windows = windows[:limit]
        frames = even_sample(frames, (limit // len(windows)) * tiles_per_image)
    groups = [tuple(frames[i : i + tiles_per_image]) for i in range(0, len(frames), tiles_per_image)]
    return [_ImagePlan(group, (window,) * len(group), grid) for window in windows for group in groups]


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


def _make_image(plan: _ImagePlan, frames: dict[tuple[str, int], Frame], image_size: int | None) -> ModelImage | None:
    """Render one planned image from the decoded frames (None when none of its frames decoded)."""
    kept = [
        (tile, window)
        for tile, window in zip(plan.tiles, plan.windows, strict=True)
        if (tile.instance.sop_instance_uid, tile.frame) in frames
    ]
    if not kept:
        return None
    rendered = [render_frame(frames[tile.instance.sop_instance_uid, tile.frame], window) for tile, window in kept]
    names = [window.name if window else shown.window for (_, window), shown in zip(kept, rendered, strict=True)]
    tiles = [tile for tile, _ in kept]
    if plan.labelled:
        tags = [_tile_tag(n, window, name) for n, ((_, window), name) in enumerate(zip(kept, names, strict=True), 1)]
        pixels = labelled_montage([r.pixels for r in rendered], tags, image_size)
        label = _montage_label(tiles, names)
    elif plan.grid:
        pixels = montage([r.pixels for r in rendered], plan.grid, image_size)
        label = _label(tiles, names[0], f"{plan.grid}x{plan.grid}")
    else:
        single = rendered[0].pixels
        pixels = pad_to_square(fit(single, image_size) if image_size else single)
        label = _label(tiles, names[0], None)
    pixels.setflags(write=False)
    mixed = len(set(names)) > 1
    evidence = tuple(_evidence(tile, name if mixed else None) for tile, name in zip(tiles, names, strict=True))
    return ModelImage(pixels, evidence, names[0], label)


def _evidence(tile: SeriesFrame, window: str | None) -> Evidence:
    """Return the evidence entry of one shown frame."""
    instance = tile.instance
    return Evidence(instance.sop_class_uid, instance.sop_instance_uid, instance.series_uid, tile.frame, window)


def _tile_tag(number: int, preset: Window | None, name: str | None) -> str:
    """Return the text burned into a montage tile: its number, and its window where a preset was asked for."""
    return f"{number} {name.replace('_', ' ')}" if preset is not None and name else str(number)


def _montage_label(tiles: Sequence[SeriesFrame], windows: Sequence[str | None]) -> str:
    """Describe a labelled montage: how many slices in which windows, where from, and which tiles are which.

    E.g. ``"montage of 4 slices x 2 windows (8 tiles, numbered row by row): CT series 3, slices 38, 113,
    188, 263/300; tiles 1-4 lung window; tiles 5-8 mediastinum window"``.
    """
    order = list(dict.fromkeys(windows))
    positions = list({(t.instance.sop_instance_uid, t.frame): t for t in tiles}.values())
    head = f"montage of {len(positions)} {positions[0].kind}{'' if len(positions) == 1 else 's'}"
    if len(order) > 1:
        head += f" x {len(order)} windows ({len(tiles)} tiles, numbered row by row)"
        keys = [
            f"tiles {_span([n for n, w in enumerate(windows, 1) if w == window])} {_window_phrase(window)}"
            for window in order
            if window
        ]
        return "; ".join([f"{head}: {_label(positions, None, None)}", *keys])
    head += " (tiles numbered row by row)"
    return f"{head}: {_label(positions, order[0], None)}"


def _span(numbers: Sequence[int]) -> str:
    """Write tile numbers as ``"1-4"`` when consecutive, else as a list."""
    if len(numbers) > 1 and numbers[-1] - numbers[0] == len(numbers) - 1:
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(str(n) for n in numbers)


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
