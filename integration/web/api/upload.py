"""Photo upload: a JPEG/PNG and a small form, wrapped into DICOM for the same pipeline.

``POST /api/uploads/photo`` (JSON answers) and the page ``GET``/``POST /upload`` (HTML answers, no script
needed) take ``multipart/form-data``: ``file`` plus the patient and request fields of
:func:`integration.intake.photo.validate_details`, among them ``recognizable_features``: ``YES`` (the
default) or ``NO``, whether the photo shows a face or other recognisable features, written as the DICOM's
Recognizable Visual Features (a ``YES`` photo never goes to a model server outside the trust boundary).
Uploaders and administrators, signed in with the session cookie, send the CSRF token (hidden ``csrf_token``
field or ``X-CSRF-Token`` header).  The body must declare its length (411 otherwise; 413 above the limit),
so nothing unbounded is read.  Bad input answers 422 naming every bad field and stores nothing.  The photo
is converted (:mod:`integration.intake.photo`) and stored through the listener's intake
(:mod:`integration.intake`) as a new study of the uploader's site with ``source='upload'``, complete at
once: the next assembly pass queues it.  Audited ``upload.photo`` (with the answer about recognisable
features); refusals are audited too (``upload.refused``, aggregated).  A photo may have at most
``PACSVLM_MAX_PHOTO_PIXELS`` pixels (its DICOM file holds 3 bytes a pixel: a 160 kB PNG of 49 megapixels
became a 147 MB file and cost 1.1 GiB to convert), checked from its header before decoding; each user has a
few uploads in progress at most (:class:`~integration.web.security.limits.UploadGate`).
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import FormData, UploadFile

from integration.config import Settings
from integration.intake.intake import intake_for
from integration.intake.outcome import UPLOAD_AE, Origin, Result
from integration.intake.photo import (
    MAX_PHOTO_BYTES,
    MAX_PHOTO_PIXELS,
    PhotoDetails,
    PhotoInstance,
    PhotoInvalid,
    decode_photo,
    photo_to_dicom,
    validate_details,
)
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.tables import UserRole
from integration.web.deps import CurrentUser, app_settings, client_address, require_roles
from integration.web.pages.templating import PageRoute, render
from integration.web.schemas import StoredPhoto
from integration.web.security.csrf import require_csrf
from integration.web.security.limits import PHOTO_BODY_BYTES, UploadGate
from integration.web.security.refusals import record_refusal

log = logging.getLogger(__name__)

#: The form's text fields.
FIELDS = (
    "patient_id",
    "patient_name",
    "birth_date",
    "sex",
    "body_part",
    "laterality",
    "clinical_question",
    "study_description",
    "recognizable_features",
)
#: Decoding and converting hold a few copies of the pixels: at most this many at once per process.
_CONVERSIONS = threading.BoundedSemaphore(2)


#: The signed-in uploader or administrator (401 without a session, 403 for other roles).
Uploader = Annotated[
    CurrentUser,
    Depends(require_roles(UserRole.UPLOADER, UserRole.ADMIN, refusal="uploading is for uploaders and administrators")),
]


def max_photo_pixels(settings: Settings) -> int:
    """Return the most pixels a photo may have: its DICOM file (3 bytes a pixel) must fit the limits.

    Parameters
    ----------
    settings : Settings
        ``max_photo_pixels`` and ``max_instance_bytes``.

    Returns
    -------
    int
        Pixels; a photo with more is refused from its header, before any pixel is decoded.
    """
    return max(1, min(settings.max_photo_pixels, settings.max_instance_bytes // 3, MAX_PHOTO_PIXELS))


def _convert(data: bytes, details: PhotoDetails, max_pixels: int) -> tuple[PhotoInstance, tuple[int, int]]:
    """Decode and wrap the photo (blocking, memory-hungry: a bounded number at once)."""
    with _CONVERSIONS:
        pixels = decode_photo(data, max_pixels=max_pixels)
        rows, columns = int(pixels.shape[0]), int(pixels.shape[1])
        return photo_to_dicom(pixels, details), (rows, columns)


def _store(
    settings: Settings,
    request: Request,
    user: CurrentUser,
    instance: PhotoInstance,
    shape: tuple[int, int],
    recognizable: bool,
) -> None:
    """Store the converted instance and audit the upload (blocking)."""
    origin = Origin(
        calling_ae=UPLOAD_AE,
        source="upload",
        site_id=user.site_id,
        stable_seconds=0.0,  # a photo is complete as it arrives
        any_site=user.role is UserRole.ADMIN,
    )
    outcome = intake_for(settings).store_part10(instance.part10, origin)
    if not outcome.succeeded:
        log.error("photo upload by user %d not stored: %s (%s)", user.id, outcome.reason, outcome.result)
        if outcome.result is Result.OUT_OF_RESOURCES:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the photo could not be stored now; try again")
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, "the photo could not be stored")
    with session_scope(settings.database_url) as session:
        add_event(
            session,
            actor=user.username,
            action="upload.photo",
            object_type="study",
            object_id=instance.study_uid,
            source=client_address(request),
            detail={
                "bytes": len(instance.part10),
                "rows": shape[0],
                "columns": shape[1],
                "recognizable_features": "YES" if recognizable else "NO",
            },
        )
    log.info("photo upload by user %d stored as a new study", user.id)


async def _read_form(request: Request) -> FormData:
    """Check the declared body length, the CSRF token, then parse the form."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise HTTPException(status.HTTP_411_LENGTH_REQUIRED, "the request must declare its Content-Length")
    if int(declared) > PHOTO_BODY_BYTES:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"the photo may have at most {MAX_PHOTO_BYTES // 1024**2} MiB"
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data")
    await require_csrf(request)
    return await request.form(max_files=2, max_fields=len(FIELDS) + 4)


async def receive_photo(request: Request, user: CurrentUser) -> tuple[PhotoInstance, dict[str, str]]:
    """Read, validate, convert and store one photo upload.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    user : CurrentUser
        The uploader.

    Returns
    -------
    tuple of (PhotoInstance, dict)
        The stored instance and the form's text fields (to show them again).

    Raises
    ------
    PhotoInvalid
        Naming every bad field (nothing stored).
    fastapi.HTTPException
        411/413/415 for the body, 403 without the CSRF token, 503/500 when storing failed.
    """
    gate: UploadGate = request.app.state.upload_gate
    with gate.admit(user.id):
        try:
            return await _receive_photo(request, user)
        except PhotoInvalid as exc:
            fields = ", ".join(sorted(exc.errors))  # the fields' names only, never what was typed
            record_refusal(request, "upload.refused", reason=f"invalid photo upload: {fields}")
            raise


async def _receive_photo(request: Request, user: CurrentUser) -> tuple[PhotoInstance, dict[str, str]]:
    settings = app_settings(request)
    form = await _read_form(request)
    try:
        fields = {name: value for name in FIELDS if isinstance(value := form.get(name), str)}
        errors: dict[str, str] = {}
        details: PhotoDetails | None = None
        try:
            details = validate_details(fields)
        except PhotoInvalid as exc:
            errors.update(exc.errors)
        upload = form.get("file")
        data = await upload.read(MAX_PHOTO_BYTES + 1) if isinstance(upload, UploadFile) else b""
        if not isinstance(upload, UploadFile) or (not upload.filename and not data):
            errors["file"] = "is required"
        elif len(data) > MAX_PHOTO_BYTES:
            errors["file"] = f"is larger than {MAX_PHOTO_BYTES // 1024**2} MiB"
        if errors or details is None:
            raise PhotoInvalid(errors)
        instance, shape = await anyio.to_thread.run_sync(_convert, data, details, max_photo_pixels(settings))
    finally:
        await form.close()
    await anyio.to_thread.run_sync(_store, settings, request, user, instance, shape, details.recognizable)
    return instance, fields


def _instance_json(instance: PhotoInstance) -> dict[str, str]:
    return {
        "study_uid": instance.study_uid,
        "series_uid": instance.series_uid,
        "sop_instance_uid": instance.sop_instance_uid,
    }


def upload_router() -> APIRouter:
    """Build the photo upload routers: the JSON API and the page.

    Returns
    -------
    fastapi.APIRouter
        ``POST /api/uploads/photo``, ``GET /upload`` and ``POST /upload``.
    """
    router = APIRouter()
    errors: dict[int | str, dict[str, Any]] = {
        403: {"description": "not allowed for your role, or missing CSRF token"},
        411: {"description": "no Content-Length"},
        413: {"description": "photo above the size limit"},
        422: {"description": "invalid fields, each named"},
        201: {"model": StoredPhoto, "description": "the new study's UIDs"},
    }

    @router.post("/api/uploads/photo", status_code=status.HTTP_201_CREATED, summary="Upload a photo", responses=errors)
    async def upload_photo(request: Request, user: Uploader) -> JSONResponse:
        """Convert a JPEG/PNG photo with its patient and request details into a new DICOM study."""
        try:
            instance, _ = await receive_photo(request, user)
        except PhotoInvalid as exc:
            detail = [{"loc": ["body", name], "msg": message} for name, message in exc.errors.items()]
            return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)
        return JSONResponse(_instance_json(instance), status_code=status.HTTP_201_CREATED)

    pages = APIRouter(route_class=PageRoute, tags=["upload page"])

    @pages.get("/upload", response_class=HTMLResponse, summary="Photo upload page")
    def upload_page(request: Request, user: Uploader) -> HTMLResponse:
        """The upload form."""
        return _page(request)

    @pages.post("/upload", response_class=HTMLResponse, summary="Photo upload from the page")
    async def upload_from_page(request: Request, user: Uploader) -> HTMLResponse:
        """Store the photo and show the page again: the new study's UID, or what to correct."""
        try:
            instance, _ = await receive_photo(request, user)
        except PhotoInvalid as exc:
            form = await request.form()
            values = {name: value for name in FIELDS if isinstance(value := form.get(name), str)}
            return _page(request, errors=exc.errors, values=values, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)
        return _page(request, stored=_instance_json(instance), status_code=status.HTTP_201_CREATED)

    router.include_router(pages)
    return router


def _page(
    request: Request,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    stored: dict[str, str] | None = None,
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    context = {
        "errors": errors or {},
        "values": values or {},
        "stored": stored,
        "max_megabytes": MAX_PHOTO_BYTES // 1024**2,
        "body_parts": BODY_PART_SUGGESTIONS,
    }
    return render(request, "upload.html", context, status_code=status_code)


#: Body Part Examined defined terms offered by the form (any other valid term may be typed).
BODY_PART_SUGGESTIONS = (
    "SKIN",
    "HEAD",
    "FACE",
    "EYE",
    "MOUTH",
    "NECK",
    "CHEST",
    "BREAST",
    "ABDOMEN",
    "BACK",
    "ARM",
    "ELBOW",
    "HAND",
    "FINGER",
    "HIP",
    "LEG",
    "KNEE",
    "FOOT",
    "TOE",
)
