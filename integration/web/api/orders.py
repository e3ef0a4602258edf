"""FHIR orders in: ``POST /fhir/ServiceRequest``, ``PUT /fhir/ServiceRequest/{id}``, ``GET /fhir/ServiceRequest/{id}``.

Why here: an EHR that speaks FHIR places imaging orders as ServiceRequests; they become the same order
controls as HL7 ORM/OMI (:mod:`integration.orders.fhir_in` maps them, :func:`integration.store.orders.apply_order`
applies them, one transaction per request).  Who may send: uploaders and administrators (the roles that feed
data in; an EHR gets an uploader account of its site), authenticated like DICOMweb clients: HTTP Basic, or
the review app's session with its CSRF token (:func:`~integration.web.security.dicomweb_auth.dicomweb_user`).
An uploader's orders belong to their site; they read and change only those (another site's order answers 404,
like one that does not exist).  Radiologists may read orders; administrators may do everything.

* ``POST`` creates (201, server-assigned id) or, for an order already held (same accession number and
  patient), applies the resource to it (200, its id); the same content again changes nothing.
* ``PUT`` creates with the client's id (201) or changes the order this id created (200); the same content
  again changes nothing.  A ServiceRequest cannot move to another accession number or patient (409: revoke
  it and send a new one).
* ``completed`` changes nothing (``PUT`` of a held order answers it as it is; otherwise 422).

Answers are ``application/fhir+json``: the stored order as a ServiceRequest, or an OperationOutcome with a
4xx and a message naming the element (never a value).  Logs and audit events name the order's row id and
the outcome, never patient data.  Withdrawn drafts (a cancel after drafting) are sent their withdrawal once
the transaction has committed (:func:`integration.export.corrections.withdraw_reports`).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.export.corrections import withdraw_reports
from integration.orders.fhir_in import (
    FHIR_ID,
    InvalidServiceRequest,
    ServiceRequestIn,
    operation_outcome,
    order_message,
    read_service_request,
    service_request_json,
)
from integration.store.audit import add_event
from integration.store.order_tables import Order
from integration.store.orders import CREATED, REFUSED, apply_order
from integration.store.session import session_scope
from integration.store.tables import UserRole, utcnow
from integration.web.deps import CurrentUser, app_settings, client_address, site_for_new
from integration.web.security.dicomweb_auth import dicomweb_user
from integration.web.security.refusals import CrossSiteRefused, audit_http_refusal

log = logging.getLogger(__name__)

#: The media type of every answer.
FHIR_JSON = "application/fhir+json"
#: Body types taken.
_BODY_TYPES = frozenset({"application/fhir+json", "application/json"})
#: Who may send orders.
WRITERS = (UserRole.UPLOADER, UserRole.ADMIN)
#: Who may read them.
READERS = (UserRole.UPLOADER, UserRole.ADMIN, UserRole.RADIOLOGIST)
#: OperationOutcome issue types of HTTP refusals.
_ISSUE_CODES = {401: "login", 403: "forbidden", 404: "not-found", 409: "conflict", 413: "too-costly", 429: "throttled"}


@dataclass
class _Refusal(Exception):
    """An answer other than success, raised inside the transaction so that it rolls back."""

    status_code: int
    message: str
    code: str = "invalid"
    #: The order exists but belongs to another site (audited as ``access.cross_site``).
    cross_site: bool = False


@dataclass(frozen=True)
class _Applied:
    resource: dict[str, Any]
    created: bool
    withdrawn_reports: list[int]


def fhir_answer(status_code: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON answer that no cache keeps (it holds patient data)."""
    return Response(
        json.dumps(content, separators=(",", ":")),
        status_code=status_code,
        media_type=FHIR_JSON,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def outcome_answer(
    status_code: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """An OperationOutcome answer with one error issue."""
    return fhir_answer(
        status_code, operation_outcome(message, code or _ISSUE_CODES.get(status_code, "invalid")), headers
    )


async def _user(request: Request, roles: tuple[UserRole, ...]) -> CurrentUser | Response:
    """The authenticated user, or the OperationOutcome answer of the refusal (audited like other refusals)."""
    try:
        user, _ = await dicomweb_user(request, roles)
    except HTTPException as exc:
        audit_http_refusal(request, exc)
        message = exc.detail if isinstance(exc.detail, str) else "not allowed"
        return outcome_answer(exc.status_code, message, headers=dict(exc.headers or {}))
    return user


def _visible(order: Order | None, user: CurrentUser) -> Order | None:
    """The order when the user may see it: administrators every order, others those of their site."""
    if order is None or user.of_site(order.site_id):
        return order
    return None


def _by_fhir_id(session: Session, resource_id: str) -> Order | None:
    return session.scalars(select(Order).where(Order.fhir_id == resource_id)).first()


def _apply(
    settings: Settings,
    user: CurrentUser,
    parsed: ServiceRequestIn,
    resource_id: str | None,
    source: str | None,
    site_code: str | None = None,
) -> _Applied:
    """Apply one ServiceRequest in one transaction (``resource_id``: the PUT's id; None for a POST)."""
    with session_scope(settings.database_url) as session:
        held = _by_fhir_id(session, resource_id) if resource_id is not None else None
        if held is not None and _visible(held, user) is None:
            raise _Refusal(404, f"no ServiceRequest {resource_id}", "not-found", cross_site=True)
        if parsed.changes_nothing:
            if held is None:
                raise _Refusal(422, "a completed ServiceRequest creates no order (send active)", "not-supported")
            return _Applied(service_request_json(held), False, [])
        message_id = resource_id or parsed.resource_id
        if message_id and parsed.version_id:
            message_id = f"{message_id}/_history/{parsed.version_id}"
        try:
            message = order_message(parsed, exists=held is not None, message_id=message_id)
        except InvalidServiceRequest as exc:
            raise _Refusal(422, str(exc), exc.code) from None
        if held is not None and (
            held.accession_number != message.accession_number.strip()
            or held.patient_id != message.patient_id.strip()
            or held.issuer_of_patient_id != message.issuer_of_patient_id.strip()
        ):
            raise _Refusal(
                409,
                "a ServiceRequest cannot change its accession number or patient: revoke it and send a new one",
                "conflict",
            )
        if held is not None:
            site_id = held.site_id
        else:  # a user of several sites names the order's site (``?site=CODE``)
            try:
                site_id = site_for_new(session, user, site_code)
            except HTTPException as exc:
                raise _Refusal(422, str(exc.detail), "required") from None
        result = apply_order(
            session, message, source="fhir", sender=f"api:{user.username}", site_id=site_id, now=utcnow()
        )
        if result.outcome == REFUSED or result.order_id is None:
            raise _Refusal(409, result.reason or "the order control was refused", "conflict")
        order = session.get(Order, result.order_id)
        assert order is not None
        if _visible(order, user) is None:
            raise _Refusal(409, "the order belongs to another site", "conflict")
        wanted = resource_id or order.fhir_id or secrets.token_hex(16)
        if order.fhir_id not in (None, wanted):
            raise _Refusal(409, f"this order is held as ServiceRequest/{order.fhir_id}: send it there", "conflict")
        if _by_fhir_id(session, wanted) not in (None, order):
            raise _Refusal(409, f"ServiceRequest {wanted} is another order", "conflict")
        order.fhir_id = wanted
        add_event(
            session,
            actor=user.username,
            action="order.fhir",
            object_type="order",
            object_id=str(order.id),
            source=source,
            detail={"control": str(message.control), "outcome": result.outcome, "studies": result.studies},
        )
        session.flush()
        log.info("FHIR order %s by %s: %s (%s)", order.id, user.username, message.control, result.outcome)
        return _Applied(service_request_json(order), result.outcome == CREATED, result.withdrawn_reports)


def _withdraw(settings: Settings, report_ids: list[int]) -> None:
    """Send the withdrawal of drafts whose order was cancelled (after commit); failures are logged, not raised.

    The order change is committed either way; a withdrawal not sent stays pending for the resend sweep.
    """
    try:
        withdraw_reports(settings, report_ids, "order cancelled over FHIR")
    except Exception:
        log.exception("sending the withdrawal of reports %s failed", report_ids)


async def _take(request: Request, resource_id: str | None) -> Response:
    """The body of ``POST`` and ``PUT``: authenticate, parse, apply, answer."""
    user = await _user(request, WRITERS)
    if isinstance(user, Response):
        return user
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _BODY_TYPES:
        return outcome_answer(415, "send the ServiceRequest as application/fhir+json", "not-supported")
    try:
        parsed = read_service_request(await request.body())
    except InvalidServiceRequest as exc:
        return outcome_answer(400 if exc.code == "structure" else 422, str(exc), exc.code)
    if resource_id is not None and parsed.resource_id != resource_id:
        return outcome_answer(400, "the resource's id must equal the id in the URL", "invalid")
    settings = app_settings(request)
    try:
        applied = await anyio.to_thread.run_sync(
            _apply, settings, user, parsed, resource_id, client_address(request), request.query_params.get("site")
        )
    except _Refusal as refusal:
        if refusal.cross_site and resource_id is not None:
            audit_http_refusal(request, CrossSiteRefused(refusal.message, "order", resource_id))
        return outcome_answer(refusal.status_code, refusal.message, refusal.code)
    if applied.withdrawn_reports:
        await anyio.to_thread.run_sync(_withdraw, settings, applied.withdrawn_reports)
    location = f"/fhir/ServiceRequest/{applied.resource['id']}"
    return fhir_answer(201 if applied.created else 200, applied.resource, {"Location": location})


def _read(settings: Settings, user: CurrentUser, resource_id: str) -> dict[str, Any] | bool:
    """The order as a ServiceRequest; else whether it exists (for another site) or not."""
    with session_scope(settings.database_url) as session:
        held = _by_fhir_id(session, resource_id)
        order = _visible(held, user)
        return service_request_json(order) if order is not None else held is not None


def orders_router() -> APIRouter:
    """Build the FHIR orders router (``/fhir/ServiceRequest``)."""
    router = APIRouter(prefix="/fhir", tags=["orders"])
    answers: dict[int | str, dict[str, Any]] = {
        code: {"description": "OperationOutcome", "content": {FHIR_JSON: {}}}
        for code in (400, 401, 403, 404, 409, 415, 422)
    }

    @router.post("/ServiceRequest", summary="Place an order (FHIR R4 ServiceRequest)", responses=answers)
    async def create_service_request(request: Request) -> Response:
        """Create the order (201) or apply the resource to the same order held already (200)."""
        return await _take(request, None)

    @router.put("/ServiceRequest/{resource_id}", summary="Create or change an order by id", responses=answers)
    async def update_service_request(resource_id: str, request: Request) -> Response:
        """Create the order with this id (201) or change or cancel the order it names (200)."""
        if not FHIR_ID.fullmatch(resource_id):
            return outcome_answer(400, "not a FHIR id (letters, digits, '-' and '.', at most 64)")
        return await _take(request, resource_id)

    @router.get("/ServiceRequest/{resource_id}", summary="Read an order", responses=answers)
    async def read_service_request_route(resource_id: str, request: Request) -> Response:
        """The order as a ServiceRequest; 404 when there is none or it belongs to another site."""
        user = await _user(request, READERS)
        if isinstance(user, Response):
            return user
        if not FHIR_ID.fullmatch(resource_id):
            return outcome_answer(404, "no such ServiceRequest", "not-found")
        resource = await anyio.to_thread.run_sync(_read, app_settings(request), user, resource_id)
        if isinstance(resource, bool):
            message = f"no ServiceRequest {resource_id}"
            if resource:
                audit_http_refusal(request, CrossSiteRefused(message, "order", resource_id))
            return outcome_answer(404, message, "not-found")
        return fhir_answer(200, resource)

    return router
