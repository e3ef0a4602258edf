"""WADO-RS (PS3.18 10.4): studies, series and instances, their metadata, frames and bulk data, under ``/dicomweb``.

A viewer or a PACS fetches what a site holds here: ``multipart/related; type="application/dicom"`` (or a
single ``application/dicom`` for one instance), DICOM JSON metadata with pixel data as ``BulkDataURI``,
frames as ``multipart/related; type="application/octet-stream"`` and bulk data.  Reads are for
radiologists and administrators (viewer token, HTTP Basic or the session:
:func:`~integration.web.security.dicomweb_auth.dicomweb_reader`), each seeing only their site's studies
(another site's study answers 404).  The transfer syntax is the stored one unless Explicit VR Little Endian
is asked for (converted); another syntax answers 406.  Answers are streamed file by file after the
database session has closed (:mod:`integration.web.dicomweb.wado_files`), so a 300-slice series passes
in constant memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse

from integration.config import Settings
from integration.imaging.pixels import UndecodableImage, number_of_frames
from integration.web.deps import AppSettings, CurrentUser, Uid
from integration.web.dicomweb.links import dicomweb_base
from integration.web.dicomweb.negotiation import (
    DICOM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    FRAME_MEDIA_TYPES,
    MULTIPART,
    OCTET_STREAM,
    MediaRange,
    can_convert,
    matches,
    media_ranges,
    not_acceptable,
    part_type_of,
)
from integration.web.dicomweb.wado_content import (
    PIXEL_DATA,
    NoSuchFrame,
    bulk_reader,
    frame_reader,
    instance_json,
    read_header,
)
from integration.web.dicomweb.wado_files import (
    Part,
    ServedObject,
    dicom_part,
    explicit_little_endian,
    multipart_body,
    new_boundary,
    objects_for,
)
from integration.web.security.dicomweb_auth import dicomweb_reader

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: Most frames one request may name.
MAX_FRAMES = 10_000
_DICOM_OFFER = f'{MULTIPART}; type="{DICOM}" (as stored, or transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN})'
_FRAME_OFFER = f'{MULTIPART}; type="{OCTET_STREAM}" (or the stored compression\'s image type)'
_JSON_RANGES = frozenset({DICOM_JSON, "application/json"})
#: Metadata bytes gathered before they are sent.
_JSON_PIECE_BYTES = 256 * 1024

Reader = Annotated[CurrentUser, Depends(dicomweb_reader)]
StudyParam = Annotated[Uid, PathParam(max_length=64, description="Study Instance UID")]
SeriesParam = Annotated[Uid, PathParam(max_length=64, description="Series Instance UID")]
InstanceParam = Annotated[Uid, PathParam(max_length=64, description="SOP Instance UID")]
FrameList = Annotated[str, PathParam(max_length=100_000, pattern=r"^[0-9]+(,[0-9]+)*$", description="e.g. 1,3")]
TagParam = Annotated[str, PathParam(pattern=r"^[0-9A-Fa-f]{8}$", description="a top-level tag, e.g. 7FE00010")]


def _headers() -> dict[str, str]:
    return {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff", "Vary": "Accept"}


def choose_dicom(ranges: list[MediaRange], objects: list[ServedObject], single: bool) -> tuple[bool, str | None]:
    """Pick the answer's form: (multipart or not, the transfer syntax wanted or None for as stored).

    Raises
    ------
    fastapi.HTTPException
        406 when no alternative of the ``Accept`` header can be met.
    """
    for item in ranges:
        if item.essence == DICOM and not single:
            continue
        if item.essence != DICOM:
            part = part_type_of(item)
            if part is None or not matches(MediaRange(part), DICOM):
                continue
        wanted = item.transfer_syntax
        if all(can_convert(served.item.transfer_syntax_uid, wanted) for served in objects):
            return item.essence != DICOM, wanted
    raise not_acceptable(_DICOM_OFFER)


def _multipart(parts: list[Part], part_type: str) -> StreamingResponse:
    boundary = new_boundary()
    return StreamingResponse(
        multipart_body(parts, boundary),
        media_type=f'{MULTIPART}; type="{part_type}"; boundary={boundary}',
        headers=_headers(),
    )


def _retrieve(request: Request, objects: list[ServedObject], single: bool) -> Response:
    multipart, wanted = choose_dicom(media_ranges(request.headers.get("accept")), objects, single)
    if multipart:
        return _multipart([dicom_part(served, wanted) for served in objects], DICOM)
    served = objects[0]
    stored = served.item.transfer_syntax_uid
    media_type = f"{DICOM}; transfer-syntax={wanted or stored}"
    if wanted is None or wanted == stored:
        return FileResponse(served.path, media_type=media_type, headers=_headers())
    try:
        body = explicit_little_endian(served.path)
    except ValueError as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"this instance {exc}") from None
    return Response(body, media_type=media_type, headers=_headers())


def _metadata(request: Request, settings: Settings, objects: list[ServedObject]) -> StreamingResponse:
    ranges = media_ranges(request.headers.get("accept"))
    if not any(item.essence in _JSON_RANGES or matches(item, DICOM_JSON) for item in ranges):
        raise not_acceptable(DICOM_JSON)

    base = dicomweb_base(request, settings)

    def uri_for(served: ServedObject) -> Callable[[int], str]:
        item = served.item
        prefix = f"{base}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_instance_uid}/bulkdata/"
        return lambda tag: f"{prefix}{tag:08X}"

    uris = [uri_for(served) for served in objects]

    def body() -> Iterator[bytes]:
        pending, written = bytearray(b"["), False
        for index, served in enumerate(objects):
            try:
                found = instance_json(served.path, uris[index])
            except UndecodableImage:
                log.warning("object %s left out of metadata: unreadable", served.item.sop_instance_uid)
                continue
            if written:
                pending += b","
            pending += json.dumps(found, separators=(",", ":")).encode("utf-8")
            written = True
            if len(pending) >= _JSON_PIECE_BYTES:  # several instances per thread hop and write
                yield bytes(pending)
                pending.clear()
        pending += b"]"
        yield bytes(pending)

    return StreamingResponse(body(), media_type=DICOM_JSON, headers=_headers())


def _frame_choice(ranges: list[MediaRange], stored: str) -> bool | None:
    """For frames: True for the stored compression as is, False for uncompressed, None when nothing fits."""
    compressed_type = FRAME_MEDIA_TYPES.get(stored)
    for item in ranges:
        part = part_type_of(item)
        if part is None:
            continue
        wanted, syntax = MediaRange(part), item.params.get("transfer-syntax", "").strip()
        if compressed_type and syntax in ("", "*", stored):
            if part != OCTET_STREAM and matches(wanted, compressed_type):
                return True  # image/jpeg, image/*, */*
            if part == OCTET_STREAM and syntax == "*":
                return True  # octet-stream with transfer-syntax=*: as stored (cornerstone, OHIF)
        native_ok = (None, EXPLICIT_VR_LITTLE_ENDIAN) if compressed_type else (None, EXPLICIT_VR_LITTLE_ENDIAN, stored)
        if matches(wanted, OCTET_STREAM) and item.transfer_syntax in native_ok:
            return False
    return None


def _frames(request: Request, served: ServedObject, numbers: list[int] | None) -> StreamingResponse:
    stored = served.item.transfer_syntax_uid
    encapsulated_ok = _frame_choice(media_ranges(request.headers.get("accept")), stored)
    if encapsulated_ok is None:
        raise not_acceptable(_FRAME_OFFER)
    compressed_type = FRAME_MEDIA_TYPES.get(stored)
    try:
        if numbers is None:  # the whole pixel data, as frames
            numbers = list(range(1, number_of_frames(read_header(served.path)) + 1))
        kind, readers = frame_reader(served.path, numbers, encapsulated_ok)
    except NoSuchFrame as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except UndecodableImage as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"this image cannot be read: {exc}") from None
    if kind == "encapsulated" and compressed_type:
        media_type = f"{compressed_type}; transfer-syntax={stored}"
    else:
        media_type = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    parts = [Part(media_type, reader) for reader in readers]
    return _multipart(parts, media_type.split(";", 1)[0])


def _frame_numbers(frames: str) -> list[int]:
    numbers = [int(piece) for piece in frames.split(",")]
    if len(numbers) > MAX_FRAMES or min(numbers) < 1:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"frame numbers start at 1; at most {MAX_FRAMES} at once")
    return numbers


def wado_router() -> APIRouter:
    """Build the WADO-RS router (mounted under ``/dicomweb`` by :mod:`integration.web.dicomweb.read`).

    Returns
    -------
    fastapi.APIRouter
        Retrieve study, series, instance; their metadata; frames; bulk data.
    """
    router = APIRouter(tags=["dicomweb"])
    instance_path = "/studies/{study}/series/{series}/instances/{instance}"
    dicom_answer: dict[int | str, dict[str, Any]] = {
        200: {"content": {MULTIPART: {}, DICOM: {}}},
        406: {"description": "not acceptable"},
    }
    json_answer: dict[int | str, dict[str, Any]] = {200: {"content": {DICOM_JSON: {}}}}

    @router.get("/studies/{study}", summary="Retrieve a study", response_class=Response, responses=dicom_answer)
    def retrieve_study(request: Request, study: StudyParam, settings: AppSettings, user: Reader) -> Response:
        """Every object of the study, as ``multipart/related; type="application/dicom"``."""
        return _retrieve(request, objects_for(settings, user, study), single=False)

    @router.get(
        "/studies/{study}/series/{series}", summary="Retrieve a series", response_class=Response, responses=dicom_answer
    )
    def retrieve_series(
        request: Request, study: StudyParam, series: SeriesParam, settings: AppSettings, user: Reader
    ) -> Response:
        """Every object of the series."""
        return _retrieve(request, objects_for(settings, user, study, series), single=False)

    @router.get(instance_path, summary="Retrieve an instance", response_class=Response, responses=dicom_answer)
    def retrieve_instance(
        request: Request,
        study: StudyParam,
        series: SeriesParam,
        instance: InstanceParam,
        settings: AppSettings,
        user: Reader,
    ) -> Response:
        """One object: multipart, or a single ``application/dicom`` when asked for that."""
        return _retrieve(request, objects_for(settings, user, study, series, instance), single=True)

    @router.get("/studies/{study}/metadata", summary="Study metadata", response_class=Response, responses=json_answer)
    def study_metadata(request: Request, study: StudyParam, settings: AppSettings, user: Reader) -> Response:
        """The data sets of the study's objects as DICOM JSON, pixel data as ``BulkDataURI``."""
        return _metadata(request, settings, objects_for(settings, user, study))

    @router.get(
        "/studies/{study}/series/{series}/metadata",
        summary="Series metadata",
        response_class=Response,
        responses=json_answer,
    )
    def series_metadata(
        request: Request, study: StudyParam, series: SeriesParam, settings: AppSettings, user: Reader
    ) -> Response:
        """The data sets of the series' objects as DICOM JSON."""
        return _metadata(request, settings, objects_for(settings, user, study, series))

    @router.get(
        instance_path + "/metadata", summary="Instance metadata", response_class=Response, responses=json_answer
    )
    def instance_metadata(
        request: Request,
        study: StudyParam,
        series: SeriesParam,
        instance: InstanceParam,
        settings: AppSettings,
        user: Reader,
    ) -> Response:
        """The instance's data set as DICOM JSON (an array of one)."""
        return _metadata(request, settings, objects_for(settings, user, study, series, instance))

    @router.get(instance_path + "/frames/{frames}", summary="Retrieve frames", response_class=Response)
    def retrieve_frames(
        request: Request,
        study: StudyParam,
        series: SeriesParam,
        instance: InstanceParam,
        frames: FrameList,
        settings: AppSettings,
        user: Reader,
    ) -> Response:
        """Frames (1-based, comma-separated), uncompressed or as stored when the client accepts that."""
        numbers = _frame_numbers(frames)
        return _frames(request, objects_for(settings, user, study, series, instance)[0], numbers)

    @router.get(
        instance_path + "/bulkdata/{tag}", name="wado_bulkdata", summary="Retrieve bulk data", response_class=Response
    )
    def retrieve_bulkdata(
        request: Request,
        study: StudyParam,
        series: SeriesParam,
        instance: InstanceParam,
        tag: TagParam,
        settings: AppSettings,
        user: Reader,
    ) -> Response:
        """A top-level element's value (pixel data: its frames), as ``application/octet-stream``."""
        served = objects_for(settings, user, study, series, instance)[0]
        number = int(tag, 16)
        if number == PIXEL_DATA:
            return _frames(request, served, None)
        if not any(
            (part := part_type_of(item)) and matches(MediaRange(part), OCTET_STREAM)
            for item in media_ranges(request.headers.get("accept"))
        ):
            raise not_acceptable(f'{MULTIPART}; type="{OCTET_STREAM}"')
        try:
            reader = bulk_reader(served.path, number)
        except UndecodableImage as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"this object cannot be read: {exc}") from None
        if reader is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such element")
        return _multipart([Part(OCTET_STREAM, reader)], OCTET_STREAM)

    return router
