"""Receiving photos from a form: one or more files, checked, converted and stored as one study.

Both the first upload of a telemedicine case (``POST /upload``, ``POST /api/uploads/photo``) and photos added
to it later (``POST /uploads/{case_id}/photos``) come through here, so both share the same checks and the
listener's intake path (:meth:`integration.intake.intake.Intake.store_part10`).

The body must declare its length (411 otherwise; 413 above the limit, for all its files together), the CSRF
token is checked before the form is parsed, and a form holds at most ``upload_case_max_photos`` files (a case
as a whole too).  Every file is decoded once to check it before any is stored, so bad input stores nothing;
then each is decoded again, converted and stored one at a time (holding one converted photo, not all of them).

Photos of one case share the study: the same Study Instance UID, patient and study attributes (read from the
case's first stored photo), one new series per upload batch (each batch has its own date and time and its own
answer about recognisable features, which is a series-level fact for the reader), and instance numbers that
continue through the study.  A photo added after the study was queued or drafted arrives as a late instance:
the intake bumps the study's version and the assembly queues a new draft, as for any late instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import anyio
import pydicom
from fastapi import HTTPException, Request, status
from starlette.datastructures import FormData, UploadFile

from integration.config import Settings
from integration.disk_pressure import relieving_intake
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
from integration.store.cases import case_photos, next_numbers, open_case, touch_case
from integration.store.reading_tables import UploadCase
from integration.store.session import session_scope
from integration.store.tables import Study, UserRole
from integration.web.deps import CurrentUser, app_settings, client_address, new_site_of
from integration.web.ops.purge_totals import counter_reader
from integration.web.security.csrf import require_csrf
from integration.web.security.limits import PHOTO_BODY_BYTES, UploadGate
from integration.web.security.refusals import record_refusal

log = logging.getLogger(__name__)

#: The form's text fields (``patient_name``: the JSON API's older ``Family^Given`` field).
FIELDS = (
    "patient_id",
    "family_name",
    "given_name",
    "middle_name",
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


@dataclass(frozen=True)
class Received:
    """Photos stored: the case they belong to and their instances."""

    case_id: int
    instances: list[PhotoInstance]
    fields: dict[str, str] = field(default_factory=dict)


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


@dataclass(frozen=True)
class _Place:
    """Where the photos of one batch go in their study."""

    study_uid: str | None
    series_number: int
    instance_number: int
    study_started: datetime | None = None
    study_id: str | None = None


def _check(files: list[bytes], max_pixels: int) -> None:
    """Decode every file once (blocking): any bad one refuses the whole batch before anything is stored."""
    errors: dict[str, str] = {}
    for number, data in enumerate(files, 1):
        with _CONVERSIONS:
            try:
                decode_photo(data, max_pixels=max_pixels)
            except PhotoInvalid as exc:
                suffix = f" (photo {number} of {len(files)})" if len(files) > 1 else ""
                errors.update({name: message + suffix for name, message in exc.errors.items()})
        if errors:
            raise PhotoInvalid(errors)


def _converted(files: list[bytes], details: PhotoDetails, place: _Place, max_pixels: int) -> Iterator[PhotoInstance]:
    import highdicom as hd

    study_uid, series_uid = place.study_uid or str(hd.UID()), str(hd.UID())
    now = datetime.now()  # one moment for the batch: a new study's date and time, and its series'
    for offset, data in enumerate(files):
        with _CONVERSIONS:
            pixels = decode_photo(data, max_pixels=max_pixels)
            yield photo_to_dicom(
                pixels,
                details,
                now=now,
                study_uid=study_uid,
                series_uid=series_uid,
                series_number=place.series_number,
                instance_number=place.instance_number + offset,
                study_started=place.study_started,
                study_id=place.study_id,
            )


def _store_batch(
    settings: Settings,
    request: Request,
    user: CurrentUser,
    files: list[bytes],
    details: PhotoDetails,
    case: UploadCase | None,
    site_id: int | None,
) -> Received:
    """Convert and store the batch, then open or touch the case (of ``site_id``) and audit each photo (blocking)."""
    max_pixels = max_photo_pixels(settings)
    _check(files, max_pixels)
    place = _Place(None, 1, 1) if case is None else _place_in(settings, case)
    origin = Origin(
        calling_ae=UPLOAD_AE,
        source="upload",
        site_id=case.site_id if case is not None else site_id,
        stable_seconds=0.0,  # a photo is complete as it arrives
        any_site=user.role is UserRole.ADMIN,
    )
    stored: list[PhotoInstance] = []
    for instance in _converted(files, details, place, max_pixels):
        outcome = relieving_intake(settings, counter_reader(settings)).store_part10(instance.part10, origin)
        if not outcome.succeeded:
            log.error("photo upload by user %d not stored: %s (%s)", user.id, outcome.reason, outcome.result)
            if outcome.result is Result.OUT_OF_RESOURCES:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the photo could not be stored now; try again")
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, "the photo could not be stored")
        stored.append(replace(instance, part10=b""))
        size = len(instance.part10)
        with session_scope(settings.database_url) as session:
            add_event(
                session,
                actor=user.username,
                action="upload.photo",
                object_type="study",
                object_id=instance.study_uid,
                source=client_address(request),
                detail={"bytes": size, "recognizable_features": "YES" if details.recognizable else "NO"}
                | _shape(instance),
            )
    with session_scope(settings.database_url) as session:
        if case is None:
            case_id = open_case(
                session,
                study_uid=stored[0].study_uid,
                uploader_id=user.id,
                site_id=site_id,
                clinical_question=details.clinical_question,
                body_part=details.body_part,
                laterality=details.laterality,
                patient={
                    "patient_id": details.patient_id,
                    "patient_name": details.patient_name,
                    "patient_birth_date": details.birth_date,
                    "patient_sex": details.sex,
                    "study_description": details.study_description,
                },
            )
        else:
            case_id = case.id
            touch_case(session, case_id)
    log.info("photo upload by user %d: %d photo(s) stored in case %d", user.id, len(stored), case_id)
    return Received(case_id, stored)


def _shape(instance: PhotoInstance) -> dict[str, int]:
    return {"rows": instance.rows, "columns": instance.columns}


def _place_in(settings: Settings, case: UploadCase) -> _Place:
    """Read where the next batch of a case goes: its study's UID, dates and the next series/instance numbers."""
    with session_scope(settings.database_url) as session:
        study = session.get(Study, case.study_id)
        photos = case_photos(session, case.study_id)
        series_number, instance_number = next_numbers(session, case.study_id)
        assert study is not None
        study_uid = study.study_uid
    started: datetime | None = None
    study_id: str | None = None
    if photos:
        root = settings.instance_root.resolve()
        path = (root / photos[0].storage_path).resolve()
        if path.is_relative_to(root):
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyDate", "StudyTime", "StudyID"])
            started = _study_moment(str(ds.get("StudyDate", "")), str(ds.get("StudyTime", "")))
            study_id = str(ds.get("StudyID", "")) or None
    return _Place(study_uid, series_number, instance_number, started, study_id)


def _study_moment(day: str, time: str) -> datetime | None:
    """The study's date and time as written (``YYYYMMDD``, ``HHMMSS[.ffffff]``), or None if unreadable."""
    whole, _, fraction = time.partition(".")
    try:
        moment = datetime.strptime(day + whole.ljust(6, "0")[:6], "%Y%m%d%H%M%S")
        return moment.replace(microsecond=int(fraction.ljust(6, "0")[:6])) if fraction.isdigit() else moment
    except ValueError:
        return None


def case_details(settings: Settings, case: UploadCase, form: dict[str, str]) -> PhotoDetails:
    """The details photos added to a case are written with: the case's patient and request, the form's answer.

    Raises
    ------
    PhotoInvalid
        The answer about recognisable features is neither YES nor NO.
    """
    with session_scope(settings.database_url) as session:
        study = session.get(Study, case.study_id)
        assert study is not None
        answer = (form.get("recognizable_features") or "").strip().upper() or "YES"
        if answer not in ("YES", "NO"):
            raise PhotoInvalid({"recognizable_features": "must be YES or NO"})
        return PhotoDetails(
            patient_id=study.patient_id or "",
            patient_name=study.patient_name or "",
            birth_date=study.patient_birth_date or "",
            sex=study.patient_sex or "",
            body_part=case.body_part,
            clinical_question=case.clinical_question,
            study_description=study.study_description,
            laterality=case.laterality,
            recognizable=answer == "YES",
        )


async def read_form(request: Request, max_files: int) -> FormData:
    """Check the declared body length, the CSRF token, then parse the form (at most ``max_files`` + 1 files).

    Raises
    ------
    fastapi.HTTPException
        411 without a length, 413 above the limit, 415 for another body than a form, 403 without the token.
    """
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise HTTPException(status.HTTP_411_LENGTH_REQUIRED, "the request must declare its Content-Length")
    if int(declared) > PHOTO_BODY_BYTES:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the photos may have at most {MAX_PHOTO_BYTES // 1024**2} MiB together",
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data")
    await require_csrf(request)
    return await request.form(max_files=max_files + 1, max_fields=len(FIELDS) + 5)


async def _files_of(form: FormData, room: int, max_photos: int) -> list[bytes]:
    uploads = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
    files: list[bytes] = []
    for upload in uploads:
        data = await upload.read(MAX_PHOTO_BYTES + 1)
        if not upload.filename and not data:
            continue  # an empty file input
        if len(data) > MAX_PHOTO_BYTES:
            raise PhotoInvalid({"file": f"is larger than {MAX_PHOTO_BYTES // 1024**2} MiB"})
        files.append(data)
    if not files:
        raise PhotoInvalid({"file": "is required"})
    if len(files) > room:
        raise PhotoInvalid({"file": f"has {len(files)} photos: a case holds at most {max_photos} ({room} more here)"})
    return files


async def receive_photos(request: Request, user: CurrentUser, case: UploadCase | None = None) -> Received:
    """Read, validate, convert and store the photos of a form: a new case, or more photos for ``case``.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    user : CurrentUser
        The uploader (or administrator).
    case : UploadCase, optional
        The case the photos join (already authorized); a new case by default.

    Returns
    -------
    Received
        The case and the stored instances (their files not kept), with the form's text fields.

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
            return await _receive(request, user, case)
        except PhotoInvalid as exc:
            names = ", ".join(sorted(exc.errors))  # the fields' names only, never what was typed
            record_refusal(request, "upload.refused", reason=f"invalid photo upload: {names}")
            raise


async def _receive(request: Request, user: CurrentUser, case: UploadCase | None) -> Received:
    settings = app_settings(request)
    most = settings.upload_case_max_photos
    form = await read_form(request, most)
    try:
        fields = {name: value for name in FIELDS if isinstance(value := form.get(name), str)}
        errors: dict[str, str] = {}
        details: PhotoDetails | None = None
        try:
            if case is None:
                details = validate_details(fields, question_chars=settings.upload_question_chars)
            else:
                details = case_details(settings, case, fields)
        except PhotoInvalid as exc:
            errors.update(exc.errors)
        room = most - (0 if case is None else _photos_in(settings, case))
        files: list[bytes] = []
        try:
            files = await _files_of(form, room, most)
        except PhotoInvalid as exc:
            errors.update(exc.errors)
        site_id = case.site_id if case is not None else None
        if case is None:  # a user of several sites says which one the case belongs to
            chosen = form.get("site")
            try:
                site_id = await anyio.to_thread.run_sync(
                    new_site_of, settings, user, chosen if isinstance(chosen, str) else None
                )
            except HTTPException as exc:
                errors["site"] = str(exc.detail)
        if errors or details is None:
            raise PhotoInvalid(errors)
    finally:
        await form.close()
    received = await anyio.to_thread.run_sync(_store_batch, settings, request, user, files, details, case, site_id)
    return Received(received.case_id, received.instances, fields)


def _photos_in(settings: Settings, case: UploadCase) -> int:
    with session_scope(settings.database_url) as session:
        return len(case_photos(session, case.study_id))


def stored_under(settings: Settings, storage_path: str) -> Path | None:
    """Return a stored file's path if it lies under the instance store (None otherwise)."""
    root = settings.instance_root.resolve()
    path = (root / storage_path).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None
