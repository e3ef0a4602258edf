"""Photo upload: JPEG/PNG photos and a small form, wrapped into DICOM for the same pipeline as a telemedicine case.

``POST /api/uploads/photo`` (JSON answers) and the page ``GET``/``POST /upload`` (HTML answers, no script
needed) take ``multipart/form-data``: one or more ``file`` fields (up to ``upload_case_max_photos``) plus the
patient and request fields of :func:`integration.intake.photo.validate_details`: the name as ordinary fields
(``family_name``, ``given_name``, ``middle_name``, joined into the DICOM ``Family^Given^Middle``; the JSON API
still accepts the older ``patient_name`` in DICOM form from clients written before), the clinical question up to
``upload_question_chars`` characters, and ``recognizable_features``: ``YES`` (the default) or ``NO``, whether
the photos show a face or other recognisable features (a ``YES`` photo never goes to a model server outside
the trust boundary).  Uploaders and administrators, signed in with the session cookie, send the CSRF token
(hidden ``csrf_token`` field or ``X-CSRF-Token`` header).  Bad input answers 422 naming every bad field and
stores nothing.  The photos become one new study of the uploader's site (``source='upload'``, complete at once)
and a telemedicine case the uploader follows under ``/uploads`` (:mod:`integration.web.api.cases`); receiving,
checking and storing is :mod:`integration.web.api.photo_intake`.  Audited ``upload.photo`` per photo;
refusals are audited too (``upload.refused``, aggregated).

After an upload from the page the uploader sees a confirmation: the patient as typed, the number of photos and
the case's status, with a link to the case (never a raw UID as the message).  ``GET /upload?from=<case_id>``
opens the form prefilled with the patient of one of the uploader's own cases ("New case for this patient"); a
case they may not see answers 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse

from integration.intake.person_name import name_parts
from integration.intake.photo import MAX_PHOTO_BYTES, PhotoInvalid
from integration.store.cases import Viewer, summary_of, visible_case
from integration.store.session import session_scope
from integration.store.tables import UserRole
from integration.web.api.photo_intake import FIELDS, Received, receive_photos
from integration.web.deps import CurrentUser, app_settings, require_roles, site_codes_of
from integration.web.pages.templating import PageRoute, render
from integration.web.schemas import StoredPhoto

#: The signed-in uploader or administrator (401 without a session, 403 for other roles).
Uploader = Annotated[
    CurrentUser,
    Depends(require_roles(UserRole.UPLOADER, UserRole.ADMIN, refusal="uploading is for uploaders and administrators")),
]


def viewer_of(user: CurrentUser) -> Viewer:
    """Return what the case store needs of the signed-in user."""
    return Viewer(user.id, user.role, user.site_ids)


def _received_json(received: Received) -> dict[str, Any]:
    first = received.instances[0]
    return StoredPhoto(
        case_id=received.case_id,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        sop_instance_uid=first.sop_instance_uid,
        sop_instance_uids=[instance.sop_instance_uid for instance in received.instances],
    ).model_dump()


def invalid_json(exc: PhotoInvalid) -> JSONResponse:
    """Answer 422 naming every bad field (FastAPI's ``detail`` list shape)."""
    detail = [{"loc": ["body", name], "msg": message} for name, message in exc.errors.items()]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)


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
        413: {"description": "photos above the size limit"},
        422: {"description": "invalid fields, each named"},
        201: {"model": StoredPhoto, "description": "the new case and its study's UIDs"},
    }

    @router.post("/api/uploads/photo", status_code=status.HTTP_201_CREATED, summary="Upload photos", responses=errors)
    async def upload_photo(request: Request, user: Uploader) -> JSONResponse:
        """Convert JPEG/PNG photos with their patient and request details into a new DICOM study and case."""
        try:
            received = await receive_photos(request, user)
        except PhotoInvalid as exc:
            return invalid_json(exc)
        return JSONResponse(_received_json(received), status_code=status.HTTP_201_CREATED)

    pages = APIRouter(route_class=PageRoute, tags=["upload page"])

    @pages.get("/upload", response_class=HTMLResponse, summary="Photo upload page")
    def upload_page(request: Request, user: Uploader) -> HTMLResponse:
        """The upload form; ``?from=<case_id>`` prefills the patient of one of the user's cases."""
        raw = request.query_params.get("from")
        values: dict[str, str] = {}
        if raw is not None:
            values = _patient_of(request, user, raw)
        return _page(request, values=values)

    @pages.post("/upload", response_class=HTMLResponse, summary="Photo upload from the page")
    async def upload_from_page(request: Request, user: Uploader) -> HTMLResponse:
        """Store the photos and confirm the case, or show the form again with what to correct."""
        try:
            received = await receive_photos(request, user)
        except PhotoInvalid as exc:
            form = await request.form()
            values = {name: value for name in (*FIELDS, "site") if isinstance(value := form.get(name), str)}
            return _page(request, errors=exc.errors, values=values, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)
        settings = app_settings(request)
        with session_scope(settings.database_url) as session:
            case = visible_case(session, received.case_id, viewer_of(user))
            assert case is not None  # just opened by this user
            summary = summary_of(session, case)
        context = {"case": summary, "added": len(received.instances)}
        return render(request, "upload_done.html", context, status_code=status.HTTP_201_CREATED)

    router.include_router(pages)
    return router


def _patient_of(request: Request, user: CurrentUser, raw: str) -> dict[str, str]:
    """The form's patient fields from a case the user may see (404 for any other, as for a missing one)."""
    if not raw.isdigit() or len(raw) > 12:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such case")
    with session_scope(app_settings(request).database_url) as session:
        case = visible_case(session, int(raw), viewer_of(user))
        if case is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such case")
        summary = summary_of(session, case)
    born = summary.birth_date
    return {
        **name_parts(summary.patient_name),
        "patient_id": summary.patient_id,
        "birth_date": f"{born[:4]}-{born[4:6]}-{born[6:8]}" if len(born) == 8 else "",
        "sex": summary.sex,
        "body_part": summary.body_part,
        "laterality": summary.laterality or "",
    }


def _page(
    request: Request,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    settings = app_settings(request)
    user: CurrentUser | None = getattr(request.state, "user", None)
    sites: list[str] = []
    if user is not None and len(user.site_ids) > 1:  # a user of several sites chooses the case's site
        with session_scope(settings.database_url) as session:
            sites = site_codes_of(session, user)
    context = {
        "sites": sites,
        "errors": errors or {},
        "values": values or {},
        "max_megabytes": MAX_PHOTO_BYTES // 1024**2,
        "max_photos": settings.upload_case_max_photos,
        "question_chars": settings.upload_question_chars,
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
