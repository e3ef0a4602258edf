"""Telemedicine cases for their uploaders: "My uploads", a case's page, its photos, photos added later.

Routes (uploaders and administrators; radiologists read studies from the worklist and get 403 here, like any
other role these routes are not for; no session: 401 on the API, the sign-in page on pages):

- ``GET /uploads`` and ``GET /api/uploads``: the user's own cases, newest first, with their status
  (``received``, ``drafted``, ``signed``; administrators see every case);
- ``GET /uploads/{case_id}`` and ``GET /api/uploads/{case_id}``: the patient, the question, the photos, the
  status and, once signed, the signed versions' text (never the unsigned draft);
- ``GET /uploads/{case_id}/photos/{sop_instance_uid}``: a photo's thumbnail (PNG), for the case's owner (the
  radiologists' image route checks sites, not owners);
- ``POST /uploads/{case_id}/photos`` (page, CSRF field) and ``POST /api/uploads/{case_id}/photos`` (JSON,
  CSRF header): more photos in the same study (:mod:`integration.web.api.photo_intake`).

Another uploader's case (even on the same site), another site's case and a missing case all answer 404 with
the same message (:func:`integration.store.cases.visible_case`).
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from integration.intake.photo import MAX_PHOTO_BYTES, PhotoInvalid
from integration.store.cases import (
    MAX_LISTED,
    CaseSummary,
    case_photos,
    cases_of,
    signed_texts,
    summary_of,
    visible_case,
)
from integration.store.reading_tables import UploadCase
from integration.store.session import session_scope
from integration.uids import is_valid_uid
from integration.web.api.case_schemas import CaseList, CaseView, PhotosAdded
from integration.web.api.photo_intake import receive_photos, stored_under
from integration.web.api.upload import Uploader, invalid_json, viewer_of
from integration.web.deps import CurrentUser, app_settings
from integration.web.pages.templating import PageRoute, dicom_date, person_name, render

#: Longest side of a thumbnail (pixels).
THUMBNAIL_PIXELS = 320
_MISSING = "no such case"


def case_json(summary: CaseSummary) -> dict[str, Any]:
    """A case as the JSON API shows it."""
    return {
        "case_id": summary.case_id,
        "patient": {
            "name": person_name(summary.patient_name),
            "dicom_name": summary.patient_name,
            "id": summary.patient_id,
            "birth_date": dicom_date(summary.birth_date),
            "sex": summary.sex,
        },
        "body_part": summary.body_part,
        "laterality": summary.laterality,
        "clinical_question": summary.clinical_question,
        "photos": summary.photos,
        "status": summary.status,
        "created_at": summary.created_at.isoformat(),
        "updated_at": summary.updated_at.isoformat(),
    }


#: Cases on one page of ``/uploads`` (``/api/uploads`` pages by ``limit``, at most :data:`MAX_LISTED`).
PAGE_CASES = 100
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="cases skipped: the page's start")]
PageSize = Annotated[int, Query(ge=1, le=MAX_LISTED, description="most cases on the page")]


def _case(request: Request, user: CurrentUser, case_id: int) -> UploadCase:
    with session_scope(app_settings(request).database_url) as session:
        case = visible_case(session, case_id, viewer_of(user))
        if case is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, _MISSING)
        session.expunge(case)
        return case


def _details(request: Request, case: UploadCase) -> dict[str, Any]:
    with session_scope(app_settings(request).database_url) as session:
        attached = session.get(UploadCase, case.id)
        assert attached is not None  # just authorized
        summary = summary_of(session, attached)
        photos = case_photos(session, case.study_id)
        signed = signed_texts(session, case.study_id) if summary.status == "signed" else []
    return {"case": summary, "photos": photos, "signed": signed}


def _thumbnail(path_text: str | None, request: Request) -> bytes:
    import numpy as np
    import pydicom
    from PIL import Image

    path = stored_under(app_settings(request), path_text) if path_text else None
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such photo")
    pixels = np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def cases_router() -> APIRouter:
    """Build the telemedicine case routes (pages and JSON).

    Returns
    -------
    fastapi.APIRouter
        ``/uploads``, ``/uploads/{case_id}`` and their photos, ``/api/uploads`` and ``/api/uploads/{case_id}``.
    """
    router = APIRouter(tags=["uploads"])
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "no such case (or not yours)"}}

    @router.get("/api/uploads", summary="My uploads", response_model=CaseList)
    def list_cases(
        request: Request, user: Uploader, offset: Offset = 0, limit: PageSize = MAX_LISTED
    ) -> dict[str, Any]:
        """A page of the user's telemedicine cases, newest first, with their status (``next_offset``: more)."""
        rows, next_offset = _page_of_cases(request, user, offset, limit)
        return {"cases": [case_json(row) for row in rows], "next_offset": next_offset}

    @router.get("/api/uploads/{case_id}", summary="A telemedicine case", responses=not_found, response_model=CaseView)
    def one_case(request: Request, user: Uploader, case_id: int) -> dict[str, Any]:
        """A case: patient, question, photos, status and the signed report's text once signed."""
        details = _details(request, _case(request, user, case_id))
        answer = case_json(details["case"])
        answer["images"] = [
            {"sop_instance_uid": p.sop_instance_uid, "instance_number": p.instance_number} for p in details["photos"]
        ]
        answer["signed"] = [
            {
                "version": s.version,
                "signed_by": s.author,
                "signed_at": s.signed_at.isoformat(),
                "findings": s.findings,
                "impression": s.impression,
                "text": s.text,
            }
            for s in details["signed"]
        ]
        return answer

    @router.post(
        "/api/uploads/{case_id}/photos",
        status_code=201,
        summary="Add photos",
        responses={**not_found, 201: {"model": PhotosAdded, "description": "the new photos' UIDs"}},
    )
    async def add_photos_json(request: Request, user: Uploader, case_id: int) -> JSONResponse:
        """Add photos to a case: the same study, a new series."""
        case = _case(request, user, case_id)
        try:
            received = await receive_photos(request, user, case)
        except PhotoInvalid as exc:
            return invalid_json(exc)
        uids = [instance.sop_instance_uid for instance in received.instances]
        added = PhotosAdded(case_id=case_id, sop_instance_uids=uids)
        return JSONResponse(added.model_dump(), status_code=status.HTTP_201_CREATED)

    pages = APIRouter(route_class=PageRoute, tags=["upload page"])

    @pages.get("/uploads", response_class=HTMLResponse, summary="My uploads page")
    def uploads_page(request: Request, user: Uploader, offset: Offset = 0) -> HTMLResponse:
        """A page of the user's cases, newest first, with links to the older and newer pages."""
        rows, next_offset = _page_of_cases(request, user, offset, PAGE_CASES)
        newer = max(offset - PAGE_CASES, 0) if offset else None
        return render(request, "uploads.html", {"cases": rows, "older": next_offset, "newer": newer})

    @pages.get("/uploads/{case_id}", response_class=HTMLResponse, summary="A case's page", responses=not_found)
    def case_page(request: Request, user: Uploader, case_id: int) -> HTMLResponse:
        """The case: patient, question, photos, status, add photos, and the signed report once signed."""
        return _case_page(request, user, _case(request, user, case_id))

    @pages.post("/uploads/{case_id}/photos", response_class=HTMLResponse, summary="Add photos from the page")
    async def add_photos_page(request: Request, user: Uploader, case_id: int) -> Response:
        """Add photos, then show the case (303), or the case with what to correct (422)."""
        case = _case(request, user, case_id)
        try:
            received = await receive_photos(request, user, case)
        except PhotoInvalid as exc:
            return _case_page(request, user, case, errors=exc.errors, status_code=422)
        added = len(received.instances)
        return RedirectResponse(f"/uploads/{case_id}?added={added}", status_code=status.HTTP_303_SEE_OTHER)

    @pages.get("/uploads/{case_id}/photos/{sop_instance_uid}", summary="A case photo's thumbnail")
    async def thumbnail(request: Request, user: Uploader, case_id: int, sop_instance_uid: str) -> Response:
        """A PNG thumbnail of one of the case's photos."""
        case = _case(request, user, case_id)
        if not is_valid_uid(sop_instance_uid):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such photo")
        with session_scope(app_settings(request).database_url) as session:
            paths = {p.sop_instance_uid: p.storage_path for p in case_photos(session, case.study_id)}
        png = await anyio.to_thread.run_sync(_thumbnail, paths.get(sop_instance_uid), request)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    router.include_router(pages)
    return router


def _page_of_cases(
    request: Request, user: CurrentUser, offset: int, limit: int
) -> tuple[list[CaseSummary], int | None]:
    """One page of the user's cases and the offset of the next page (None on the last page)."""
    with session_scope(app_settings(request).database_url) as session:
        rows = cases_of(session, viewer_of(user), limit=limit + 1, offset=offset)
    return rows[:limit], (offset + limit if len(rows) > limit else None)


def _case_page(
    request: Request,
    user: CurrentUser,
    case: UploadCase,
    *,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    settings = app_settings(request)
    context = _details(request, case) | {
        "errors": errors or {},
        "added": added
        if request.method == "GET" and (added := request.query_params.get("added", "")).isdigit()
        else "",
        "max_photos": settings.upload_case_max_photos,
        "max_megabytes": MAX_PHOTO_BYTES // 1024**2,
    }
    return render(request, "upload_case.html", context, status_code=status_code)
