"""DICOMweb rendered resources (PS3.18 10.4.1.1.3): an instance or one of its frames as JPEG or PNG.

Viewers that cannot decode DICOM themselves (thumbnails, a quick look, the review page's stack) ask for
``.../instances/{instance}/rendered`` or ``.../frames/{n}/rendered``.  The frame is decoded and windowed by
the same pipeline the model's images come from (:func:`integration.imaging.pixels.decode_frame`,
:func:`integration.imaging.frames.render_frame`, :func:`~integration.imaging.frames.fit`), so what a
radiologist sees matches what the model saw; the route runs in a worker thread.  Query parameters:
``window=center,width[,function]`` (``linear``, ``linear_exact`` or ``sigmoid``; the header's window when
absent), ``viewport=width,height`` (the image is scaled to fit inside, keeping its aspect ratio) and
``quality`` (JPEG, 1-100).  ``Accept`` picks ``image/jpeg`` (the default) or ``image/png``.  Authorization and
site visibility are those of WADO-RS (:mod:`integration.web.dicomweb.wado`).
"""

from __future__ import annotations

import io
import logging
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from PIL import Image

from integration.imaging.frames import fit, render_frame
from integration.imaging.pixels import UndecodableImage, decode_frame
from integration.imaging.windows import VoiFunction, Window
from integration.web.deps import AppSettings
from integration.web.dicomweb.negotiation import matches, media_ranges, not_acceptable
from integration.web.dicomweb.wado import InstanceParam, Reader, SeriesParam, StudyParam
from integration.web.dicomweb.wado_files import objects_for

log = logging.getLogger(__name__)

JPEG, PNG = "image/jpeg", "image/png"
#: Largest viewport side, in pixels.
MAX_VIEWPORT = 4096
DEFAULT_QUALITY = 90
#: How long a browser may keep a rendered image (a stored instance never changes).
RENDERED_MAX_AGE = 3600
_FUNCTIONS = {function.value.lower(): function for function in VoiFunction}


def parse_window(value: str | None) -> Window | None:
    """Parse ``center,width[,function]``.

    Raises
    ------
    fastapi.HTTPException
        400 when it is not two numbers and an optional known function, or the width is too small.
    """
    if value is None:
        return None
    pieces = [piece.strip() for piece in value.split(",")]
    try:
        if len(pieces) not in (2, 3):
            raise ValueError("window is center,width[,function]")
        function = _FUNCTIONS.get(pieces[2].lower() if len(pieces) == 3 else "linear")
        if function is None:
            raise ValueError(f"the window function is one of {', '.join(_FUNCTIONS)}")
        return Window(float(pieces[0]), float(pieces[1]), "request", function)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"bad window parameter: {exc}") from None


def parse_viewport(value: str | None) -> tuple[int, int] | None:
    """Parse ``width,height``.

    Raises
    ------
    fastapi.HTTPException
        400 unless two whole numbers from 1 to :data:`MAX_VIEWPORT`.
    """
    if value is None:
        return None
    pieces = value.split(",")
    if len(pieces) != 2 or not all(piece.strip().isdigit() for piece in pieces):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "bad viewport parameter: it is width,height")
    width, height = (int(piece) for piece in pieces)
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"viewport sides are 1 to {MAX_VIEWPORT} pixels")
    return width, height


def image_type(accept: str | None) -> str:
    """The image type to answer with: the first of JPEG and PNG the ``Accept`` header admits.

    Raises
    ------
    fastapi.HTTPException
        406 when it admits neither.
    """
    for item in media_ranges(accept):
        for candidate in (JPEG, PNG):
            if matches(item, candidate):
                return candidate
    raise not_acceptable(f"{JPEG} or {PNG}")


def render(
    path: str, frame: int, window: Window | None, viewport: tuple[int, int] | None, media_type: str, quality: int
) -> bytes:
    """Render one frame (1-based) of a stored file as JPEG or PNG.

    Raises
    ------
    IndexError
        No such frame.
    UndecodableImage
        The file or its pixel data cannot be shown.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # the file may be damaged past its header
        raise UndecodableImage(f"the file cannot be read ({type(exc).__name__})") from exc
    decoded = decode_frame(ds, frame - 1)
    pixels = render_frame(decoded, window).pixels
    if viewport is not None:
        rows, columns = pixels.shape[:2]
        scale = min(viewport[0] / columns, viewport[1] / rows)
        pixels = fit(pixels, max(1, round(max(rows, columns) * scale)), upscale=True)
    image = Image.fromarray(pixels if decoded.is_colour else pixels[:, :, 0])
    out = io.BytesIO()
    if media_type == PNG:
        image.save(out, format="PNG", compress_level=6)
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _answer(
    request: Request,
    settings: AppSettings,
    user: Reader,
    uids: tuple[str, str, str],
    frame: int,
    window: str | None,
    viewport: str | None,
    quality: int,
) -> Response:
    media_type = image_type(request.headers.get("accept"))
    chosen, box = parse_window(window), parse_viewport(viewport)
    served = objects_for(settings, user, *uids)[0]
    try:
        body = render(str(served.path), frame, chosen, box, media_type, quality)
    except IndexError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such frame") from None
    except UndecodableImage as exc:
        log.warning("instance %s frame %d cannot be rendered: %s", served.item.sop_instance_uid, frame, exc)
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"this object cannot be rendered: {exc}") from None
    headers = {
        "Cache-Control": f"private, max-age={RENDERED_MAX_AGE}",
        "Vary": "Accept",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(body, media_type=media_type, headers=headers)


WindowQuery = Annotated[str | None, Query(max_length=100, description="center,width[,linear|linear_exact|sigmoid]")]
ViewportQuery = Annotated[str | None, Query(max_length=20, description="width,height")]
QualityQuery = Annotated[int, Query(ge=1, le=100, description="JPEG quality")]


def rendered_router() -> APIRouter:
    """Build the rendered router (mounted under ``/dicomweb`` by :mod:`integration.web.dicomweb.read`).

    Returns
    -------
    fastapi.APIRouter
        ``.../instances/{instance}/rendered`` and ``.../frames/{frame}/rendered``.
    """
    router = APIRouter(tags=["dicomweb"])
    instance_path = "/studies/{study}/series/{series}/instances/{instance}"
    images: dict[int | str, dict[str, Any]] = {200: {"content": {JPEG: {}, PNG: {}}}}

    @router.get(instance_path + "/rendered", summary="Instance rendered", response_class=Response, responses=images)
    def instance_rendered(
        request: Request,
        study: StudyParam,
        series: SeriesParam,
        instance: InstanceParam,
        settings: AppSettings,
        user: Reader,
        window: WindowQuery = None,
        viewport: ViewportQuery = None,
        quality: QualityQuery = DEFAULT_QUALITY,
    ) -> Response:
        """The instance's first frame as JPEG or PNG."""
        return _answer(request, settings, user, (study, series, instance), 1, window, viewport, quality)

    @router.get(
        instance_path + "/frames/{frame}/rendered", summary="Frame rendered", response_class=Response, responses=images
    )
    def frame_rendered(
        request: Request,
        study: StudyParam,
        series: SeriesParam,
        instance: InstanceParam,
        frame: Annotated[int, PathParam(ge=1, le=1_000_000)],
        settings: AppSettings,
        user: Reader,
        window: WindowQuery = None,
        viewport: ViewportQuery = None,
        quality: QualityQuery = DEFAULT_QUALITY,
    ) -> Response:
        """One frame (1-based) as JPEG or PNG."""
        return _answer(request, settings, user, (study, series, instance), frame, window, viewport, quality)

    return router
