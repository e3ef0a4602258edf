"""Images for the review page: one frame of a stored instance as PNG, rendered on the server.

``GET /studies/{study_uid}/instances/{sop_instance_uid}/frames/{n}.png?size=&window=`` decodes the frame
with the same pipeline the model's images come from (:mod:`integration.imaging.pixels`,
:mod:`integration.imaging.windows`, :mod:`integration.imaging.frames`), shrinks its longest side to ``size``
(never enlarging it: the browser scales, so full resolution is ``size`` at least the image's own) and answers
a PNG.  ``window`` is ``default``, a CT preset or an explicit ``<center>,<width>`` (the study page's
window/level drag); anything else is a 422.  ``GET .../frames/{n}/info`` answers what the page's viewer needs
to zoom and to start a window/level drag: the frame's own size and the window ``default`` means for it.

The UIDs are checked before anything else, the instance must belong to a study the user may see (404
otherwise, as for one that does not exist), and the file path comes from the database, never from the request.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import numpy as np
import pydicom
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from PIL import Image
from sqlalchemy import select

from integration.config import Settings
from integration.imaging.frames import fit, render_frame
from integration.imaging.pixels import UndecodableImage, decode_frame
from integration.imaging.windows import AUTO_WINDOW_PERCENTILES, WINDOW_PRESETS, Window, choose_window
from integration.store.session import session_scope
from integration.store.tables import Instance, Series, Study
from integration.web.deps import AppSettings, CurrentUser, PageReviewer, StudyUid, Uid
from integration.web.pages.templating import PageRoute
from integration.web.security.access import visible

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Smallest and largest longest side of a rendered frame, in pixels (a frame is never enlarged past its own size).
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 4096
#: Longest side when the request names none.
DEFAULT_IMAGE_SIZE = 512
#: Longest side above which the PNG is compressed less (a full-resolution radiograph is encoded in a blink).
FAST_PNG_SIZE = 1024
#: How long a browser may keep a rendered frame (a stored instance never changes: the first copy is kept).
IMAGE_MAX_AGE = 3600
#: Windows a frame can be asked for by name: ``default`` (the header's VOI, else a CT preset, else the value
#: range) or a CT preset.
WindowName = Literal["default", "lung", "mediastinum", "bone", "brain", "soft_tissue"]
#: The names of :data:`WindowName`, for templates.
WINDOW_NAMES: tuple[str, ...] = ("default", *WINDOW_PRESETS)
#: Largest magnitude of an explicit window's centre or width (far beyond any stored value range).
MAX_WINDOW_VALUE = 1e7
_EXPLICIT_WINDOW = re.compile(r"^(-?\d{1,8}(?:\.\d{1,4})?),(\d{1,8}(?:\.\d{1,4})?)$")


def window_for(value: object) -> str:
    """Return the window name to ask for, for a window name stored with the model's evidence.

    Parameters
    ----------
    value : object
        A stored name (a preset, or ``header``, ``voi_lut``, ``auto``, ``native``, or None).

    Returns
    -------
    str
        The preset name, else ``"default"``.
    """
    return value if isinstance(value, str) and value in WINDOW_PRESETS else "default"


def parse_window(text: str) -> Window | None:
    """Return the window a request names: None for ``default``, a preset, or an explicit ``<center>,<width>``.

    Parameters
    ----------
    text : str
        ``default``, a name of :data:`~integration.imaging.windows.WINDOW_PRESETS`, or two decimal numbers
        (centre, then width of at least 1) separated by a comma.

    Returns
    -------
    Window or None
        None for ``default``.

    Raises
    ------
    ValueError
        Anything else.
    """
    if text == "default":
        return None
    if text in WINDOW_PRESETS:
        return WINDOW_PRESETS[text]
    match = _EXPLICIT_WINDOW.match(text)
    if match is None:
        raise ValueError("window is default, a preset name or <center>,<width>")
    center, width = float(match.group(1)), float(match.group(2))
    if abs(center) > MAX_WINDOW_VALUE or width > MAX_WINDOW_VALUE:
        raise ValueError("window centre or width out of range")
    return Window(center, width, "explicit")


def render_png(path: Path, frame_number: int, size: int, window: str | Window | None) -> bytes:
    """Render one frame of a DICOM file as a PNG whose longest side is at most ``size``.

    Parameters
    ----------
    path : pathlib.Path
        The stored file.
    frame_number : int
        1-based frame number.
    size : int
        Longest side of the PNG, in pixels; larger frames are shrunk, smaller ones kept at their own size.
    window : str, Window or None
        ``"default"`` or None (the header's window ...), a name of
        :data:`~integration.imaging.windows.WINDOW_PRESETS`, or an explicit window.

    Returns
    -------
    bytes
        The PNG: 8-bit grey for a grayscale frame, 8-bit RGB for a colour one.

    Raises
    ------
    IndexError
        The image has no such frame.
    UndecodableImage
        The file or its pixel data cannot be shown.
    ValueError
        An unknown window name.
    """
    chosen = parse_window(window) if isinstance(window, str) else window
    frame = decode_frame(_read(path), frame_number - 1)
    pixels = render_frame(frame, chosen).pixels
    if not frame.is_colour:
        pixels = np.ascontiguousarray(pixels[:, :, 0])  # one grey channel: a third of the bytes to encode and send
    pixels = fit(pixels, size)
    out = io.BytesIO()
    fast = max(pixels.shape[:2]) > FAST_PNG_SIZE
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1 if fast else 6)
    return out.getvalue()


def frame_info(path: Path, frame_number: int) -> dict[str, object]:
    """Return a frame's own size and the window ``default`` shows it with, for the page's viewer.

    Parameters
    ----------
    path : pathlib.Path
        The stored file.
    frame_number : int
        1-based frame number.

    Returns
    -------
    dict
        ``columns``, ``rows``, ``colour`` (no window applies) and ``window``: ``{"center", "width", "name"}``
        (the header's window or CT preset; for a VOI LUT or no window at all, the frame's robust value range,
        named ``auto``, as the starting point of a drag); None for colour frames.

    Raises
    ------
    IndexError
        The image has no such frame.
    UndecodableImage
        The file or its pixel data cannot be shown.
    """
    frame = decode_frame(_read(path), frame_number - 1)
    rows, columns = frame.values.shape[:2]
    info: dict[str, object] = {"columns": int(columns), "rows": int(rows), "colour": frame.is_colour, "window": None}
    if frame.is_colour:
        return info
    chosen = None if frame.attributes.get("VOILUTSequence") else choose_window(frame.attributes)
    if chosen is None:
        low, high = (float(v) for v in np.percentile(frame.values, AUTO_WINDOW_PERCENTILES))
        if high <= low:
            low, high = float(frame.values.min()), float(frame.values.max())
        chosen = Window((low + high) / 2, max(1.0, high - low), "auto")
    info["window"] = {"center": round(chosen.center, 2), "width": round(chosen.width, 2), "name": chosen.name}
    return info


def _read(path: Path) -> pydicom.Dataset:
    """Read a stored file with its pixel data.

    Raises
    ------
    UndecodableImage
        The file cannot be read.
    """
    try:
        return pydicom.dcmread(path, force=True)
    except Exception as exc:  # the file may be damaged past its header
        raise UndecodableImage(f"the file cannot be read ({type(exc).__name__})") from exc


def instance_path(settings: Settings, user: CurrentUser, study_uid: str, sop_instance_uid: str) -> Path:
    """Return the stored file of an instance of a study the user may see.

    Parameters
    ----------
    settings : Settings
        Database and instance store.
    user : CurrentUser
        The signed-in user.
    study_uid, sop_instance_uid : str
        The study and the instance, validated UIDs.

    Returns
    -------
    pathlib.Path
        The file, inside the instance store.

    Raises
    ------
    fastapi.HTTPException
        404 when the instance does not exist, is not in that study, or the study is another site's.
    """
    with session_scope(settings.database_url) as session:
        storage_path: str | None = session.scalar(
            visible(
                select(Instance.storage_path)
                .join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Study.study_uid == study_uid, Instance.sop_instance_uid == sop_instance_uid),
                user,
            )
        )
    if storage_path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image")
    root = settings.instance_root.resolve()
    path = (root / storage_path).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image")
    return path


def images_router() -> APIRouter:
    """Build the image router.

    Returns
    -------
    fastapi.APIRouter
        ``GET /studies/{study_uid}/instances/{sop_instance_uid}/frames/{frame}.png`` and ``.../frames/{frame}/info``.
    """
    router = APIRouter(route_class=PageRoute, tags=["review page"])

    @router.get(
        "/studies/{study_uid}/instances/{sop_instance_uid}/frames/{frame}.png",
        summary="One frame as PNG",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def frame_png(
        study_uid: StudyUid,
        sop_instance_uid: Annotated[Uid, PathParam(max_length=64)],
        frame: Annotated[int, PathParam(ge=1, le=100_000)],
        settings: AppSettings,
        user: PageReviewer,
        size: Annotated[int, Query(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)] = DEFAULT_IMAGE_SIZE,
        window: Annotated[str, Query(max_length=40)] = "default",
    ) -> Response:
        """The frame as PNG, its longest side at most ``size`` pixels; 404 for another site's study."""
        try:
            chosen = parse_window(window)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"window: {exc}") from None
        path = instance_path(settings, user, study_uid, sop_instance_uid)
        png = _shown(sop_instance_uid, frame, lambda: render_png(path, frame, size, chosen))
        return Response(png, media_type="image/png", headers=_IMAGE_HEADERS)

    @router.get("/studies/{study_uid}/instances/{sop_instance_uid}/frames/{frame}/info", summary="A frame's size")
    def frame_details(
        study_uid: StudyUid,
        sop_instance_uid: Annotated[Uid, PathParam(max_length=64)],
        frame: Annotated[int, PathParam(ge=1, le=100_000)],
        settings: AppSettings,
        user: PageReviewer,
    ) -> Response:
        """The frame's columns and rows and the window ``default`` means for it (JSON); 404 for another site's."""
        path = instance_path(settings, user, study_uid, sop_instance_uid)
        info = _shown(sop_instance_uid, frame, lambda: frame_info(path, frame))
        return JSONResponse(info, headers=_IMAGE_HEADERS)

    return router


#: Headers of the image routes: a stored instance never changes, but what a user may see does (the cookie).
_IMAGE_HEADERS = {
    "Cache-Control": f"private, max-age={IMAGE_MAX_AGE}",
    "Vary": "Cookie",
    "X-Content-Type-Options": "nosniff",
}


def _shown(sop_instance_uid: str, frame: int, work: Callable[[], _T]) -> _T:
    """Run ``work`` on a frame, answering 404 for a frame that does not exist and 422 for one that cannot be shown."""
    try:
        return work()
    except IndexError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such frame") from None
    except UndecodableImage as exc:
        log.warning("instance %s frame %d cannot be shown: %s", sop_instance_uid, frame, exc)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"this image cannot be shown: {exc}") from None
