"""DICOMweb STOW-RS intake (PS3.18 10.5): ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``.

The body (``multipart/related; type="application/dicom"``) is streamed through a parser into a spool (memory
up to a few megabytes, then an unnamed temporary file on the instance store's file system), each part
checked against the per-instance size limit and the whole body against the per-request limit (a part
without a Content-Type is taken as the body's ``type``, ``application/dicom``).  Only once the
body is complete and well formed are its parts stored, one by one, through the same intake as the DICOM
listener (:mod:`integration.intake`): a malformed or oversized request stores nothing.  Each instance
succeeds or fails on its own; the answer is DICOM JSON with the Referenced SOP Sequence (stored, duplicates
included) and the Failed SOP Sequence (with the DICOM failure reason), and HTTP 200 (all stored), 202 (some
failed) or 409 (none stored).  No instance is coerced or has elements discarded, so there are no warnings.
Each stored instance carries its WADO-RS RetrieveURL, and the answer the study's when the request named
one or everything stored belongs to one study (absolute, from the URL the client used), so a sender can
read back what it stored (:mod:`integration.web.dicomweb.read`; readers are radiologists and administrators).

A request holds at most ``PACSVLM_MAX_STOW_PARTS`` parts (413 as soon as one more begins), which also bounds
the answer; the body is parsed and spooled in worker threads, a megabyte at a time, so a body of a million
tiny parts cannot stall the event loop (``/health`` took 21.8 s before).  Each user has a few uploads in
progress at most (:class:`~integration.web.security.limits.UploadGate`, 429 beyond).

Senders authenticate with HTTP Basic (DICOMweb clients; throttled like the sign-in form) or with the
review app's session cookie plus the CSRF token header (:mod:`integration.web.security.dicomweb_auth`).  Uploaders
and administrators may store; a study gets the uploader's site (a user of several sites names it:
``?site=CODE``; without it the request answers 422), ``source='stow'`` and the pseudo calling AE
:data:`~integration.intake.outcome.STOW_AE`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.requests import ClientDisconnect

from integration.config import Settings
from integration.dicom import status as dicom_status
from integration.disk_pressure import relieving_intake
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import STOW_AE, Origin, Result, StoreOutcome
from integration.intake.part10 import split_part10
from integration.intake.storage import InstanceStore, StorageFull
from integration.intake.structure import InvalidInstance
from integration.live_config import live_settings
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.tables import UserRole
from integration.uids import is_valid_uid
from integration.web.deps import CurrentUser, app_settings, client_address, new_site_of
from integration.web.dicomweb.links import dicomweb_base
from integration.web.dicomweb.multipart_related import (
    MalformedMultipart,
    MultipartRelatedParser,
    PartData,
    PartEnd,
    PartSpool,
    PartStart,
    parse_media_type,
)
from integration.web.ops.purge_totals import counter_reader
from integration.web.security.dicomweb_auth import dicomweb_user
from integration.web.security.limits import UploadGate

log = logging.getLogger(__name__)

#: Media type of the answer.
DICOM_JSON = "application/dicom+json"
_ACCEPTABLE = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})
_DICOM = "application/dicom"
#: Bytes kept from the start of each part: enough for the file meta of an instance refused for its size.
_HEAD_BYTES = 4096


def max_upload_bytes(settings: Settings) -> int:
    """The largest request body a STOW-RS request may have, in bytes."""
    return settings.max_upload_bytes


@dataclass
class _Part:
    """Where one part's content lies in the spool, and whether it can be stored at all."""

    dicom: bool
    offset: int
    length: int = 0
    oversized: bool = False
    head: bytes = b""  # the first bytes (file meta), to name an oversized instance in the answer


@dataclass(frozen=True)
class _Result:
    outcome: StoreOutcome
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None = None


#: Body bytes gathered on the event loop before they are parsed and spooled in a worker thread.
_BATCH_BYTES = 1024 * 1024


#: Bytes fed to the parser at once (a part takes at least 10 bytes: at most a few thousand events at once).
_PARSE_BYTES = 64 * 1024
#: Body bytes still read (and dropped) after a refusal, so that the client reads the answer, not a reset.
_DRAIN_BYTES = 64 * 1024 * 1024


class _TooManyParts(Exception):
    """The body opens more parts than a request may hold."""


@dataclass
class _Reception:
    """Parses and spools the body in worker threads (never on the event loop); counts the parts."""

    parser: MultipartRelatedParser
    spool: PartSpool
    part_limit: int
    max_parts: int
    parts: list[_Part] = field(default_factory=list)
    current: _Part | None = None

    def consume(self, chunk: bytes) -> None:
        """Parse a piece of the body (blocking), 64 KiB at a time so that tiny parts make few events at once."""
        view = memoryview(chunk)
        for start in range(0, len(view), _PARSE_BYTES):
            self._events(bytes(view[start : start + _PARSE_BYTES]))

    def _events(self, piece: bytes) -> None:
        for event in self.parser.feed(piece):
            if isinstance(event, PartStart):
                if len(self.parts) >= self.max_parts:
                    raise _TooManyParts
                media = parse_media_type(event.headers.get("content-type"))
                self.current = _Part(dicom=media is None or media.essence == _DICOM, offset=self.spool.size)
            elif isinstance(event, PartData):
                self._data(event.data)
            elif isinstance(event, PartEnd):
                assert self.current is not None
                self.parts.append(self.current)
                self.current = None

    def _data(self, data: bytes) -> None:
        current = self.current
        assert current is not None
        current.length += len(data)
        if not current.dicom or current.oversized:
            return
        if len(current.head) < _HEAD_BYTES:
            current.head += data[: _HEAD_BYTES - len(current.head)]
        if current.length > self.part_limit:
            current.oversized = True
            self.spool.truncate(current.offset)
        else:
            self.spool.append(data)


async def _receive(
    request: Request, boundary: str, spool: PartSpool, body_limit: int, part_limit: int, max_parts: int
) -> list[_Part]:
    """Stream the body into the spool; return the parts (400/413 as HTTP errors, nothing stored yet)."""
    reception = _Reception(MultipartRelatedParser(boundary), spool, part_limit, max_parts)
    received = 0
    batch = bytearray()
    stream = request.stream()
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > body_limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the request body exceeds {body_limit} bytes")
            batch += chunk
            if len(batch) >= _BATCH_BYTES:
                piece, batch = bytes(batch), bytearray()
                await anyio.to_thread.run_sync(reception.consume, piece)
        if batch:
            await anyio.to_thread.run_sync(reception.consume, bytes(batch))
    except _TooManyParts:
        drained = 0
        async for chunk in stream:  # read on (and drop) a little, so the client can read the answer
            drained += len(chunk)
            if drained > _DRAIN_BYTES:
                break
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"a STOW-RS request may hold at most {max_parts} instances; send the others in another request",
        ) from None
    reception.parser.close()
    return reception.parts


def _store_parts(
    intake: InstanceIntake, spool: PartSpool, parts: list[_Part], origin: Origin, study_uid: str | None
) -> list[_Result]:
    """Store the spooled parts one by one (blocking: run in a worker thread)."""
    results = []
    with spool.view() as whole:
        for part in parts:
            sop_class = sop_instance = None
            if not part.dicom:
                outcome = StoreOutcome(Result.CANNOT_UNDERSTAND, reason="the part is not application/dicom")
            elif part.oversized:
                outcome = StoreOutcome(Result.OUT_OF_RESOURCES, reason="above the size limit")
                with contextlib.suppress(InvalidInstance):
                    meta = split_part10(part.head)
                    sop_class, sop_instance = meta.sop_class_uid, meta.sop_instance_uid
            else:
                piece = whole[part.offset : part.offset + part.length]
                try:
                    file = split_part10(piece)
                except InvalidInstance as exc:
                    outcome = StoreOutcome(Result.CANNOT_UNDERSTAND, reason=str(exc))
                else:
                    sop_class, sop_instance = file.sop_class_uid, file.sop_instance_uid
                    outcome = intake.store(
                        file.dataset,
                        file.transfer_syntax_uid,
                        origin,
                        expected_study_uid=study_uid,
                        expected_sop_class_uid=sop_class,
                        expected_sop_instance_uid=sop_instance,
                    )
                    del file
                finally:
                    piece.release()
            header = outcome.header
            results.append(
                _Result(
                    outcome,
                    header.sop_class_uid if header else sop_class,
                    header.sop_instance_uid if header else sop_instance,
                    header.study_uid if header else study_uid,
                    header.series_uid if header else None,
                )
            )
    return results


def _room_check(store: InstanceStore) -> Callable[[int], None]:
    """Build the spool's check that ``more`` bytes leave the store's headroom free (raises StorageFull)."""

    def check(more: int) -> None:
        if store.min_free_bytes and store.free_bytes() - more < store.min_free_bytes:
            raise StorageFull("storage headroom exhausted")

    return check


def _uid_element(uid: str | None) -> dict[str, Any]:
    """A UI attribute in DICOM JSON; a value only when it is a valid UID (nothing else is echoed)."""
    return {"vr": "UI", "Value": [uid]} if uid is not None and is_valid_uid(uid) else {"vr": "UI"}


def _retrieve_url(base: str, *uids: str | None) -> str | None:
    """The WADO-RS URL of a study, series or instance (None unless every UID is a valid UID)."""
    if not all(uid is not None and is_valid_uid(uid) for uid in uids):
        return None
    path = "/".join(f"{level}/{uid}" for level, uid in zip(("studies", "series", "instances"), uids, strict=False))
    return f"{base}/{path}"


def stow_answer(results: list[_Result], base: str = "", study_uid: str | None = None) -> tuple[int, dict[str, Any]]:
    """The HTTP status (200 all stored, 202 some failed, 409 none stored) and the Store Instances Response.

    ``base`` is the absolute ``/dicomweb`` URL the RetrieveURLs start with (none without it); ``study_uid``
    the study the request named.
    """
    referenced, failed = [], []
    for result in results:
        item = {"00081150": _uid_element(result.sop_class_uid), "00081155": _uid_element(result.sop_instance_uid)}
        if result.outcome.succeeded:
            url = _retrieve_url(base, result.study_uid, result.series_uid, result.sop_instance_uid) if base else None
            if url:
                item["00081190"] = {"vr": "UR", "Value": [url]}
            referenced.append(item)
        else:
            failed.append({**item, "00081197": {"vr": "US", "Value": [dicom_status.for_result(result.outcome.result)]}})
    answer: dict[str, Any] = {}
    studies = {result.study_uid for result in results if result.outcome.succeeded}
    study = study_uid or (studies.pop() if len(studies) == 1 else None)
    study_url = _retrieve_url(base, study) if base and referenced else None
    if study_url:
        answer["00081190"] = {"vr": "UR", "Value": [study_url]}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        answer["00081199"] = {"vr": "SQ", "Value": referenced}
    if not failed:
        return status.HTTP_200_OK, answer
    return (status.HTTP_202_ACCEPTED if referenced else status.HTTP_409_CONFLICT), answer


def _check_media_types(request: Request) -> str:
    """Return the body's boundary after checking Content-Type (415/400) and Accept (406)."""
    media = parse_media_type(request.headers.get("content-type"))
    if media is None or media.essence != "multipart/related":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, 'send multipart/related; type="application/dicom"')
    kind = media.params.get("type", _DICOM).lower()
    if kind != _DICOM:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f'only type="{_DICOM}" is supported (not metadata with bulk data)',
        )
    boundary = media.params.get("boundary")
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the multipart/related media type has no boundary")
    accept = request.headers.get("accept")
    if accept:
        ranges = {item.split(";", 1)[0].strip().lower() for item in accept.split(",")}
        if not ranges & _ACCEPTABLE:
            raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"the answer is {DICOM_JSON}")
    return boundary


def _audit(settings: Settings, request: Request, user: CurrentUser, via: str, results: list[_Result]) -> None:
    """One ``upload.stow`` event per study touched, with counts (no patient data)."""
    per_study: dict[str | None, Counter[str]] = {}
    for result in results:
        study = result.study_uid if result.study_uid and is_valid_uid(result.study_uid) else None
        label = {"stored": "stored", "duplicate": "duplicates"}.get(result.outcome.label, "failed")
        per_study.setdefault(study, Counter())[label] += 1
    with session_scope(settings.database_url) as session:
        for study, counts in per_study.items():
            add_event(
                session,
                actor=user.username,
                action="upload.stow",
                object_type="study",
                object_id=study,
                source=client_address(request),
                detail={
                    "stored": counts["stored"],
                    "duplicates": counts["duplicates"],
                    "failed": counts["failed"],
                    "auth": via,
                },
            )


async def _stow(request: Request, study_uid: str | None) -> Response:
    user, via = await dicomweb_user(request, (UserRole.UPLOADER, UserRole.ADMIN))
    gate: UploadGate = request.app.state.upload_gate
    with gate.admit(user.id):
        return await _stow_admitted(request, study_uid, user, via)


async def _stow_admitted(request: Request, study_uid: str | None, user: CurrentUser, via: str) -> Response:
    settings = app_settings(request)
    if study_uid is not None and not is_valid_uid(study_uid):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the study UID in the path is not a valid DICOM UID")
    boundary = _check_media_types(request)
    body_limit = max_upload_bytes(settings)
    declared = request.headers.get("content-length", "")
    length = int(declared) if declared.isdigit() else None
    if length is not None and length > body_limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the request body exceeds {body_limit} bytes")
    intake = relieving_intake(settings, counter_reader(settings))
    store = intake.files
    if length is not None and store.min_free_bytes and store.free_bytes() - length < store.min_free_bytes:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, "not enough storage space for this request")
    # a user of several sites names the study's site (``?site=CODE``), before anything is received
    site_id = await anyio.to_thread.run_sync(new_site_of, settings, user, request.query_params.get("site"))
    spool = PartSpool(intake.files.tmp_dir, room=_room_check(intake.files))
    try:
        try:
            parts = await _receive(
                request, boundary, spool, body_limit, settings.max_instance_bytes, settings.max_stow_parts
            )
        except MalformedMultipart as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {exc}") from None
        except ClientDisconnect:
            return Response(status_code=status.HTTP_400_BAD_REQUEST)  # nobody to answer; nothing stored
        except OSError as exc:  # StorageFull (headroom) or a failing file system
            log.error("STOW-RS request not spooled: %s", exc.strerror or exc)
            raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, "no room to receive the request") from None
        if not parts:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the multipart body has no part")
        origin = Origin(
            calling_ae=STOW_AE,
            source="stow",
            site_id=site_id,
            stable_seconds=live_settings(settings).stable_seconds_for(STOW_AE),
            any_site=user.role is UserRole.ADMIN,
        )
        results = await anyio.to_thread.run_sync(_store_parts, intake, spool, parts, origin, study_uid)
    finally:
        spool.close()
    await anyio.to_thread.run_sync(_audit, settings, request, user, via, results)
    code, answer = stow_answer(results, dicomweb_base(request, settings), study_uid)
    counts = Counter(result.outcome.label for result in results)
    log.info("STOW-RS by user %d: %s", user.id, dict(counts))
    return Response(
        content=_json(answer), status_code=code, media_type=DICOM_JSON, headers={"Cache-Control": "no-store"}
    )


def _json(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode()


def stow_router() -> APIRouter:
    """Build the STOW-RS router: ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study_uid}``."""
    router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
    errors: dict[int | str, dict[str, Any]] = {
        400: {"description": "malformed multipart body or study UID"},
        401: {"description": "no or wrong credentials (WWW-Authenticate: Basic)"},
        403: {"description": "not allowed for your role, or missing CSRF token"},
        409: {"description": "no instance stored"},
        413: {"description": "request body above the limit"},
        415: {"description": "not multipart/related; type=application/dicom"},
    }

    @router.post("/studies", summary="Store instances (STOW-RS)", responses=errors)
    async def store_instances(request: Request) -> Response:
        """Store the instances of the body, whatever their studies."""
        return await _stow(request, None)

    @router.post("/studies/{study_uid}", summary="Store instances of one study (STOW-RS)", responses=errors)
    async def store_study_instances(study_uid: str, request: Request) -> Response:
        """Store the instances of the body; any of another study fails."""
        return await _stow(request, study_uid)

    return router
