"""Images for the review page: one frame of a stored instance as PNG, rendered on the server.

``GET /studies/{study_uid}/instances/{sop_instance_uid}/frames/{n}.png?size=&window=`` decodes the frame
with the same pipeline the model's images come from (:mod:`integration.imaging.pixels`,
:mod:`integration.imaging.windows`, :mod:`integration.imaging.frames`), scales its longest side to ``size``
and answers a PNG.  The UIDs are checked before anything else, the instance must belong to a study the
user may see (404 otherwise, as for one that does not exist), and the file path comes from the database,
never from the request.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Annotated, Literal

import pydicom
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from PIL import Image
from sqlalchemy import select

from integration.config import Settings
from integration.imaging.frames import fit, render_frame
from integration.imaging.pixels import UndecodableImage, decode_frame
from integration.imaging.windows import WINDOW_PRESETS
from integration.store.session import session_scope
from integration.store.tables import Instance, Series, Study
from integration.web.deps import AppSettings, CurrentUser, PageReviewer, StudyUid, Uid
from integration.web.pages.templating import PageRoute
from integration.web.security.access import visible

log = logging.getLogger(__name__)

#: Smallest and largest longest side of a rendered frame, in pixels.
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024
#: Longest side when the request names none.
DEFAULT_IMAGE_SIZE = 512
#: How long a browser may keep a rendered frame (a stored instance never changes: the first copy is kept).
IMAGE_MAX_AGE = 3600
#: Windows a frame can be asked for: ``default`` (the header's VOI, else a CT preset, else the value range)
#: or a CT preset.
WindowName = Literal["default", "lung", "mediastinum", "bone", "brain", "soft_tissue"]
#: The names of :data:`WindowName`, for templates.
WINDOW_NAMES: tuple[str, ...] = ("default", *WINDOW_PRESETS)


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


def render_png(path: Path, frame_number: int, size: int, window: str) -> bytes:
    """Render one frame of a DICOM file as a PNG whose longest side is ``size``.

    Parameters
    ----------
    path : pathlib.Path
        The stored file.
    frame_number : int
        1-based frame number.
    size : int
        Longest side of the PNG, in pixels (smaller frames are enlarged, larger ones shrunk).
    window : str
        ``"default"`` or a name of :data:`~integration.imaging.windows.WINDOW_PRESETS`.

    Returns
    -------
    bytes
        The PNG (8-bit RGB).

    Raises
    ------
    IndexError
        The image has no such frame.
    UndecodableImage
        The file or its pixel data cannot be shown.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # the file may be damaged past its header
        raise UndecodableImage(f"the file cannot be read ({type(exc).__name__})") from exc
    frame = decode_frame(ds, frame_number - 1)
    preset = WINDOW_PRESETS.get(window) if window != "default" else None
    pixels = fit(render_frame(frame, preset).pixels, size, upscale=True)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=6)
    return out.getvalue()


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
        ``GET /studies/{study_uid}/instances/{sop_instance_uid}/frames/{frame}.png``.
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
        window: Annotated[WindowName, Query()] = "default",
    ) -> Response:
        """The frame as PNG, its longest side ``size`` pixels; 404 for another site's study."""
        path = instance_path(settings, user, study_uid, sop_instance_uid)
        try:
            png = render_png(path, frame, size, window)
        except IndexError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such frame") from None
        except UndecodableImage as exc:
            log.warning("instance %s frame %d cannot be shown: %s", sop_instance_uid, frame, exc)
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"this image cannot be shown: {exc}") from None
        return Response(
            png,
            media_type="image/png",
            headers={
                "Cache-Control": f"private, max-age={IMAGE_MAX_AGE}",
                "Vary": "Cookie",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return router
