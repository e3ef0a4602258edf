"""Series of a study: image instances grouped by series, slices in order, frames sampled evenly.

Slices are sorted along the slice normal (from Image Position and Orientation
(Patient)), else by Instance Number; :func:`even_sample` then takes the centre
of each of k equal segments of the volume.  It never takes the first and the
last slice for a sample of two: on a chest CT those are the lung apex and the
upper abdomen, with nothing of the chest in between; the centres of two halves
(a quarter and three quarters of the way down) both show lung and mediastinum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from integration.imaging.instances import Instance

_Item = TypeVar("_Item")
#: Slices whose normals' cosine is below this are not one stack (they are not sorted by position).
PARALLEL_COSINE = 0.99


@dataclass(frozen=True)
class Series:
    """The image instances of one series, in slice order.

    Attributes
    ----------
    uid : str
        Series Instance UID.
    number : int or None
        Series Number.
    modality : str or None
        Modality.
    region : str or None
        Body region (or Body Part Examined when no region is recognised).
    instances : tuple of Instance
        Sorted by :func:`sort_slices`.
    by_position : bool
        Whether the order is by position along the slice normal.
    """

    uid: str
    number: int | None
    modality: str | None
    region: str | None
    instances: tuple[Instance, ...]
    by_position: bool

    @property
    def frames(self) -> int:
        """Number of frames in the series."""
        return sum(instance.frames for instance in self.instances)


@dataclass(frozen=True)
class SeriesFrame:
    """One frame of one instance, with its place in the series (for labels).

    Attributes
    ----------
    instance : Instance
        The instance.
    frame : int
        1-based frame number, as in DICOM.
    place : int
        1-based place of the frame in its series.
    total : int
        Number of frames in the series.
    kind : str
        ``"slice"`` (sorted by position), ``"frame"`` (of a multi-frame instance) or ``"image"``.
    """

    instance: Instance
    frame: int
    place: int
    total: int
    kind: str


def group_series(instances: Sequence[Instance]) -> list[Series]:
    """Group image instances by series, each sorted by :func:`sort_slices`, in :func:`series_order`."""
    by_uid: dict[str, list[Instance]] = {}
    for instance in instances:
        by_uid.setdefault(instance.series_uid, []).append(instance)
    series = []
    for uid, members in by_uid.items():
        ordered, by_position = sort_slices(members)
        first = ordered[0]
        region = next((i.region for i in ordered if i.region), None) or first.body_part
        series.append(Series(uid, first.series_number, first.modality, region, tuple(ordered), by_position))
    return sorted(series, key=series_order)


def sort_slices(instances: Sequence[Instance]) -> tuple[list[Instance], bool]:
    """Sort the instances of one series along the slice normal; also return whether sorted by position.

    The normal is the cross product of Image Orientation (Patient)'s row and
    column directions; each slice's place is its Image Position (Patient)
    projected on it (ascending).  When any instance lacks position or
    orientation, or the slices are not parallel, the order is by Instance
    Number, then SOP Instance UID.
    """
    normal = _common_normal(instances)
    if normal is None:
        return sorted(instances, key=_number_order), False
    return sorted(instances, key=lambda i: (_projection(i, normal), *_number_order(i))), True


def even_sample(items: Sequence[_Item], count: int) -> list[_Item]:
    """Pick ``count`` items that represent the sequence: the centre of each of ``count`` equal segments.

    Item ``floor((i + 0.5) * n / count)`` for ``i`` in ``0 .. count - 1`` of ``n`` items, in order and
    without repeats (segments are at least one item long): 2 of 300 are items 75 and 225, 1 of 300 is
    item 150.  All items when there are no more than ``count``; none when ``count`` is not positive.
    """
    total = len(items)
    if count >= total:
        return list(items)
    if count <= 0:
        return []
    # floor((2i + 1) * n / 2k) in integers: exact for any n and k.
    return [items[(2 * i + 1) * total // (2 * count)] for i in range(count)]


def series_frames(series: Series) -> list[SeriesFrame]:
    """List every frame of a series with its place for labels: instances in series order, frames in frame order."""
    total = series.frames
    frames: list[SeriesFrame] = []
    for instance in series.instances:
        kind = "frame" if instance.frames > 1 else "slice" if series.by_position else "image"
        for number in range(1, instance.frames + 1):
            frames.append(SeriesFrame(instance, number, len(frames) + 1, total, kind))
    return frames


def series_order(series: Series) -> tuple[float, str]:
    """Return the sort key of a series: Series Number (missing last), then UID."""
    return (series.number if series.number is not None else math.inf, series.uid)


def _number_order(instance: Instance) -> tuple[float, str]:
    """Sort key: Instance Number (missing last), then SOP Instance UID."""
    number = instance.instance_number
    return (number if number is not None else math.inf, instance.sop_instance_uid)


def _common_normal(instances: Sequence[Instance]) -> npt.NDArray[np.float64] | None:
    """Return the slice normal shared by all instances, or None when there is none."""
    normals = []
    for instance in instances:
        if instance.position is None or instance.orientation is None:
            return None
        normal = _normal(instance.orientation)
        if normal is None:
            return None
        normals.append(normal)
    reference = normals[0]
    if any(abs(float(np.dot(reference, n))) < PARALLEL_COSINE for n in normals):
        return None
    return reference


def _normal(orientation: Sequence[float]) -> npt.NDArray[np.float64] | None:
    """Return the unit normal of an Image Orientation (Patient), or None when it is degenerate."""
    normal = np.cross(np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64))
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else None


def _projection(instance: Instance, normal: npt.NDArray[np.float64]) -> float:
    """Return an instance's position along the slice normal."""
    assert instance.position is not None  # checked by _common_normal
    return float(np.dot(np.asarray(instance.position, dtype=np.float64), normal))
