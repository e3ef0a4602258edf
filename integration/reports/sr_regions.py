"""A finding's box, given on the image the model saw, as a rectangle in the pixels of the frame it came from.

A model that points at a region gives it as fractions of its image (:data:`models.draft_schema.DRAFT_SCHEMA`'s
``box``).  A single-frame model image is the frame as rendered, scaled to the model's size keeping its aspect
ratio and padded evenly on both sides to a square (:func:`integration.imaging.frames.pad_to_square`: centred,
nothing cropped); the model side pads nothing more, as the image is square already.  So a fraction ``f`` of the
square is ``f * max(Rows, Columns)`` pixels of the frame, less the padding: ``(max - Columns) / 2`` on the left
and ``(max - Rows) / 2`` on top.  The rectangle is clipped to the frame, in DICOM SCOORD image coordinates
(column, row; ``0, 0`` the top left corner of the top left pixel).

A montage (several frames in one model image) gets no region: a box on it cannot be told apart from the
tiles' layout once stored, so such a finding stays image-level.  Nor does a frame whose size is not known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from integration.findings import Box, Finding
from integration.reports.sr_content import SeenFrame


@dataclass(frozen=True)
class FrameRegion:
    """A finding's rectangle on one frame: the frame seen and its corners in (column, row) pixel coordinates."""

    seen: SeenFrame
    left: float
    top: float
    right: float
    bottom: float

    @property
    def polyline(self) -> list[tuple[float, float]]:
        """The closed rectangle, five points (the first repeated last), clockwise from the top left."""
        corners = [(self.left, self.top), (self.right, self.top), (self.right, self.bottom), (self.left, self.bottom)]
        return [*corners, corners[0]]


def frame_box(box: Box, rows: int, columns: int) -> tuple[float, float, float, float] | None:
    """Map a box on the square model image onto a ``rows`` x ``columns`` frame, clipped to it.

    Parameters
    ----------
    box : tuple of 4 float
        ``(x0, y0, x1, y1)``, fractions 0..1 of the square image the model saw.
    rows, columns : int
        The frame's size.

    Returns
    -------
    tuple of 4 float or None
        ``(left, top, right, bottom)`` in pixels, rounded to 0.01; None when the frame size is unknown or the box
        lies wholly in the padding.
    """
    if rows <= 0 or columns <= 0:
        return None
    side = max(rows, columns)
    pad_left, pad_top = (side - columns) / 2, (side - rows) / 2
    x0, y0, x1, y1 = box
    left, right = (min(max(x * side - pad_left, 0.0), float(columns)) for x in (x0, x1))
    top, bottom = (min(max(y * side - pad_top, 0.0), float(rows)) for y in (y0, y1))
    if right <= left or bottom <= top:
        return None
    return round(left, 2), round(top, 2), round(right, 2), round(bottom, 2)


def finding_region(finding: Finding, evidence: Sequence[SeenFrame]) -> FrameRegion | None:
    """Return the rectangle of a finding's box on the one frame its image shows; None without a usable one."""
    if finding.box is None or len(finding.images) != 1:
        return None
    shown = [seen for seen in evidence if seen.image == finding.images[0]]
    if len(shown) != 1:
        return None  # a montage, or an image not in the evidence
    seen = shown[0]
    corners = frame_box(finding.box, seen.rows, seen.columns)
    return None if corners is None else FrameRegion(seen, *corners)
