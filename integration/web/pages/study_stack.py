"""The study page's viewer data: every slice of every series, in order, and which of them the model saw.

A radiologist scrolls a whole series, so the page must reach every slice; it must not carry a hundred
``<img>`` elements to do it.  The page therefore lists each series' slices as data (SOP Instance UID and frame
number, by Instance Number) and ``static/viewer.js`` fetches one rendered frame at a time from
:mod:`integration.web.api.images` (and a few neighbours ahead).  The frames the model was shown are marked
with their slice position, and the page states in one sentence how much of the study the model saw
(:attr:`StudyImages.coverage`), so nobody mistakes two slices seen for a study read.

Multi-frame instances are expanded frame by frame where a series holds only a few instances (an enhanced
CT, an ultrasound loop): their headers are read for Number of Frames; large series are single-frame slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.store.tables import Instance, Report, Series, Study
from integration.uids import is_valid_uid
from integration.web.api.images import WINDOW_NAMES
from integration.web.pages.study_view import Tile, evidence_entries

#: Most slices one series lists (the page carries their UIDs).
MAX_SLICES = 4000
#: Series with at most this many instances have their headers read for Number of Frames.
FRAME_PROBE_INSTANCES = 8


@dataclass
class SeriesStack:
    """One series as the viewer scrolls it.

    Attributes
    ----------
    series_uid : str
        The series.
    number, modality, body_part : optional
        What the series list shows.
    instances : int
        Stored instances.
    slices : list of (str, int)
        ``(SOP Instance UID, frame)`` in display order (Instance Number, then arrival; frames in order).
    seen : dict
        Slice index (0-based) to the prompt image numbers the model saw it as.
    """

    series_uid: str
    number: int | None
    modality: str | None
    body_part: str | None
    instances: int
    slices: list[tuple[str, int]] = field(default_factory=list)
    seen: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``CT series 3`` (no patient data)."""
        modality = f"{self.modality} " if self.modality else ""
        return f"{modality}series {self.number}" if self.number is not None else f"{modality}series"

    @property
    def slice_data(self) -> str:
        """The slices for the page: ``sop`` or ``sop/frame`` (frames after the first), space-separated."""
        return " ".join(sop if frame == 1 else f"{sop}/{frame}" for sop, frame in self.slices)

    @property
    def seen_data(self) -> str:
        """The model's slices for the page: ``index:image.image`` (0-based index), space-separated."""
        return " ".join(f"{index}:{'.'.join(map(str, images))}" for index, images in sorted(self.seen.items()))

    def index_of(self, sop_instance_uid: str, frame: int) -> int | None:
        """The slice index of a frame of this series, or None."""
        try:
            return self.slices.index((sop_instance_uid, frame))
        except ValueError:
            return None


@dataclass
class StudyImages:
    """The images of the study page.

    Attributes
    ----------
    model_tiles : list of Tile
        The frames the model saw, by prompt image number.
    series : list of SeriesStack
        Every series, by Series Number.
    selected : Tile or None
        The frame shown first (asked for, else the model's first, else the first slice).
    series_index, slice_index : int
        Where ``selected`` is in :attr:`series` (0 when nothing is stored).
    coverage : str or None
        How much of the study the model saw, in one sentence; None without a report.
    """

    model_tiles: list[Tile]
    series: list[SeriesStack]
    selected: Tile | None
    series_index: int = 0
    slice_index: int = 0
    coverage: str | None = None


def study_images(
    session: Session,
    study: Study,
    report: Report | None,
    *,
    instance_root: Path | None = None,
    image: str | None = None,
    frame: int | None = None,
    window: str | None = None,
) -> StudyImages:
    """Collect every series' slices, the frames the model saw and the frame shown first.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The study (already authorized).
    report : Report or None
        The report whose evidence is marked.
    instance_root : pathlib.Path, optional
        The instance store, to read Number of Frames of small series (not read when None).
    image, frame, window : optional
        The frame asked for first (ignored unless it is a frame of this study).

    Returns
    -------
    StudyImages
        The model's frames, the series and the frame shown first, with the coverage sentence.
    """
    entries = evidence_entries(report.evidence if report is not None else [])
    seen: dict[tuple[str, int], list[int]] = {}
    for number, _, sop, frame_number, _ in entries:
        seen.setdefault((sop, frame_number), []).append(number)
    series_rows = session.scalars(select(Series).where(Series.study_id == study.id)).all()
    series_rows = sorted(series_rows, key=lambda s: (s.series_number is None, s.series_number or 0, s.id))
    instance_rows = session.execute(
        select(Instance.series_id, Instance.sop_instance_uid, Instance.storage_path)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
        .order_by(Instance.instance_number.is_(None), Instance.instance_number, Instance.id)
    ).all()
    by_series: dict[int, list[tuple[str, str]]] = {}
    for series_id, sop, storage_path in instance_rows:
        by_series.setdefault(series_id, []).append((sop, storage_path))
    stacks: list[SeriesStack] = []
    series_of: dict[str, SeriesStack] = {}
    for row in series_rows:
        instances = by_series.get(row.id, [])
        stack = SeriesStack(row.series_uid, row.series_number, row.modality, row.body_part, len(instances))
        probe = instance_root is not None and len(instances) <= FRAME_PROBE_INSTANCES
        for sop, storage_path in instances:
            series_of[sop] = stack
            frames = _frames(instance_root, storage_path) if probe and instance_root is not None else 1
            frames = max(frames, *(f for (s, f) in seen if s == sop), 1)
            room = MAX_SLICES - len(stack.slices)
            stack.slices.extend((sop, n) for n in range(1, min(frames, room) + 1))
        for index, key in enumerate(stack.slices):
            if key in seen:
                stack.seen[index] = tuple(sorted(seen[key]))
        stacks.append(stack)
    model_tiles = [
        Tile(study.study_uid, series_uid, sop, frame_number, win, f"Image {number}", (number,))
        for number, series_uid, sop, frame_number, win in sorted(entries, key=lambda e: e[0])
        if sop in series_of
    ]
    images = StudyImages(model_tiles, stacks, None, coverage=coverage(stacks) if report is not None else None)
    _select(images, study.study_uid, series_of, image, frame, window)
    return images


def _frames(root: Path, storage_path: str) -> int:
    """Number of Frames of a stored instance (1 when absent or unreadable)."""
    resolved = root.resolve()
    path = (resolved / storage_path).resolve()
    if not path.is_relative_to(resolved):
        return 1
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except Exception:  # an unreadable header is one slice; the frame route says why it cannot be shown
        return 1


def coverage(stacks: Sequence[SeriesStack]) -> str:
    """Say how much of the study the model saw, e.g. ``The model saw 2 of 100 slices (series 3: 2 of 100).``.

    Parameters
    ----------
    stacks : sequence of SeriesStack
        The study's series.

    Returns
    -------
    str
        One sentence; each series the model saw is named with its share.
    """
    total = sum(len(stack.slices) for stack in stacks)
    seen = sum(len(stack.seen) for stack in stacks)
    noun = "slice" if total == 1 else "slices"
    if seen == 0:
        return f"The model saw none of the {total} {noun} of this study."
    parts = [f"{stack.name}: {len(stack.seen)} of {len(stack.slices)}" for stack in stacks if stack.seen]
    return f"The model saw {seen} of {total} {noun} ({'; '.join(parts)})."


def _select(
    images: StudyImages,
    study_uid: str,
    series_of: Mapping[str, SeriesStack],
    image: str | None,
    frame: int | None,
    window: str | None,
) -> None:
    """Set the frame shown first: the one asked for (when in the study), else the model's first, else slice 1."""
    chosen: Tile | None = None
    if image is not None and is_valid_uid(image) and image in series_of:
        asked = series_of[image]
        wanted = (image, frame or 1, window if window in WINDOW_NAMES else "default")
        chosen = next((tile for tile in images.model_tiles if tile.key == wanted), None)
        if chosen is None and asked.index_of(image, wanted[1]) is not None:
            chosen = Tile(study_uid, asked.series_uid, image, wanted[1], wanted[2], asked.name)
    if chosen is None and images.model_tiles:
        chosen = images.model_tiles[0]
    if chosen is None:
        first = next((each for each in images.series if each.slices), None)
        if first is None:
            return
        sop, number = first.slices[0]
        chosen = Tile(study_uid, first.series_uid, sop, number, "default", first.name)
    stack = series_of.get(chosen.sop_instance_uid)
    index = stack.index_of(chosen.sop_instance_uid, chosen.frame) if stack is not None else None
    if stack is None or index is None:
        return
    images.series_index, images.slice_index = images.series.index(stack), index
    label = f"{stack.name}, slice {index + 1} of {len(stack.slices)}"
    images.selected = Tile(
        study_uid,
        stack.series_uid,
        chosen.sop_instance_uid,
        chosen.frame,
        chosen.window,
        label,
        stack.seen.get(index, ()),
    )
