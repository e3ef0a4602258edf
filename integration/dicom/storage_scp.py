"""The storage SCP's decisions: who may associate, and each C-STORE handed to the intake.

A C-STORE is stored by :class:`~integration.intake.intake.InstanceIntake` (success only after the file is
durable and its row committed; nothing half-written on failure); here its origin is named (the calling AE's
site and idle time) and its outcome mapped to a DIMSE status.

A prior source that retrieves by C-MOVE (``PACSVLM_PRIOR_SOURCES``, ``"retrieve": "move"``) sends its
instances to our listener from its own AE title: that AE is admitted without being a calling AE, but only from
the source's host, and whatever it sends is stored as a prior, which only a study reserved as a prior takes
(anything else is refused, ``Refused: Not Authorized``), so the listener is not opened to new studies from
it.  An AE that also is a configured calling AE keeps its ordinary origin.  The network side
(:mod:`integration.dicom.association`) calls in here from worker threads.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.dicom import dimse, status
from integration.dicom import upper_layer as ul
from integration.dicom.peer import Peer, Rejection, StoreRequest
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import Origin
from integration.intake.spool import DatasetSpool
from integration.live_config import live_settings
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.tables import Site

log = logging.getLogger(__name__)


class SiteDirectory:
    """The site of each calling AE (``PACSVLM_CALLING_AES``, ``site``), as the row id its studies get.

    Codes are looked up once; a code without a site row yet is looked up again on the next instance, so
    ``pacs-vlm sites add`` takes effect without a restart.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def site_id_for(self, calling_ae: str) -> int | None:
        """Return the site row id of ``calling_ae``'s configured site, or None (no site, or not created yet)."""
        peer = live_settings(self.settings).calling_aes.get(calling_ae)
        code = peer.site.upper() if peer is not None and peer.site else None
        if code is None:
            return None
        with self._lock:
            if code in self._ids:
                return self._ids[code]
        with session_scope(self.settings.database_url) as session:
            site_id = session.scalar(select(Site.id).where(Site.code == code))
        if site_id is None:
            log.warning("calling AE %r names site %r, which does not exist: its studies get no site", calling_ae, code)
            return None
        with self._lock:
            self._ids[code] = site_id
        return site_id


class StorageSCP:
    """Admission, storage and audit of the storage SCP, bound to one store and one database.

    Parameters
    ----------
    settings : Settings
        The settings.
    intake : InstanceIntake
        The one way in: every C-STORE is stored there.
    """

    def __init__(self, settings: Settings, intake: InstanceIntake) -> None:
        self.settings = settings
        self.intake = intake
        self._sites = SiteDirectory(settings)
        #: AE title of each C-MOVE prior source -> the addresses it may connect from (resolved once, here).
        self.move_sources = move_source_hosts(settings.prior_sources)

    # -- association life cycle -------------------------------------------------

    def admit(self, request: ul.RequestHeader, peer: Peer) -> Rejection | None:
        """Decide on an association request from its fixed fields: protocol, called AE, calling AE and its hosts.

        Parameters
        ----------
        request : RequestHeader
            The A-ASSOCIATE-RQ's fixed fields (nothing else is decoded yet).
        peer : Peer
            The requestor's address.

        Returns
        -------
        Rejection or None
            Why it is refused, or None to go on.
        """
        if not request.protocol_version & 1:
            return Rejection(
                "protocol version not supported", source=ul.SOURCE_ACSE, diagnostic=ul.REASON_PROTOCOL_VERSION
            )
        settings = live_settings(self.settings)  # the allowlist in force (pacs-vlm config, the admin pages)
        move_hosts = None if request.calling_ae in settings.calling_aes else self.move_sources.get(request.calling_ae)
        if move_hosts is None and not settings.accept_any_calling_ae and request.calling_ae not in settings.calling_aes:
            return Rejection("calling AE not in the allowlist", diagnostic=ul.REASON_CALLING_AE)
        if request.called_ae != settings.ae_title:
            return Rejection(f"called AE is not ours ({request.called_ae!r})", diagnostic=ul.REASON_CALLED_AE)
        allowed = settings.calling_aes.get(request.calling_ae)
        hosts = move_hosts if move_hosts is not None else (allowed.hosts if allowed is not None else None)
        if hosts and peer.address not in hosts:
            return Rejection("connected from a host not allowed for this calling AE", diagnostic=ul.REASON_CALLING_AE)
        return None

    def origin_for(self, calling_ae: str) -> Origin:
        """Name the origin of a C-STORE: a calling AE's site and idle time, or a C-MOVE prior source's prior.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the calling AE's site cannot be looked up.
        """
        settings = live_settings(self.settings)
        stable_seconds = settings.stable_seconds_for(calling_ae)
        if calling_ae not in settings.calling_aes and calling_ae in self.move_sources:
            # a retrieved prior: its study was reserved (with the current study's site) before the C-MOVE
            return Origin(calling_ae, "dicom", None, stable_seconds, any_site=True, role="prior")
        return Origin(calling_ae, "dicom", self._sites.site_id_for(calling_ae), stable_seconds)

    def report_rejection(self, host: str, calling_ae: str, reason: str, count: int) -> None:
        """Log and audit refused associations: the first of a kind, or ``count`` gathered repeats."""
        times = "" if count == 1 else f" ({count} times)"
        log.warning("association rejected%s: calling AE %r from %s: %s", times, calling_ae, host, reason)
        actor = f"ae:{calling_ae}" if calling_ae else f"host:{host}"
        self._audit(actor, "dicom.association.rejected", host, {"reason": reason, "count": count})

    def ended(self, peer: Peer, how: str) -> None:
        """Log and audit what an association stored when it is released or aborted."""
        counts = dict(peer.statuses)
        log.info("association from %r at %s %s: %s", peer.calling_ae, peer.source, how, counts or "no instances")
        detail = {"ended": how, "instances": counts, **_transport(peer)}
        self._audit(f"ae:{peer.calling_ae}", "dicom.association", peer.source, detail)

    def _audit(self, actor: str, action: str, source: str, detail: dict[str, Any]) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                add_event(session, actor=actor, action=action, source=source, detail=detail)
        except SQLAlchemyError as exc:
            log.warning("audit event %s not recorded (database): %s", action, type(exc).__name__)

    # -- C-STORE ------------------------------------------------------------------

    def store_instance(self, request: StoreRequest) -> tuple[int, str]:
        """Store one instance through the intake; return its DIMSE status and an outcome label.

        Parameters
        ----------
        request : StoreRequest
            The C-STORE request's UIDs, transfer syntax, data set (in memory or spooled) and calling AE.

        Returns
        -------
        tuple of (int, str)
            Status code and one of ``stored``, ``duplicate``, ``refused``, ``error``.
        """
        calling_ae = request.calling_ae
        try:
            origin = self.origin_for(calling_ae)
        except SQLAlchemyError as exc:
            if request.spool is not None:
                request.spool.close()
            log.error("C-STORE from %r refused: database unavailable (%s)", calling_ae, type(exc).__name__)
            return status.OUT_OF_RESOURCES, "refused"
        outcome = self.intake.store(
            request.spool if request.spool is not None else memoryview(request.dataset),
            request.transfer_syntax,
            origin,
            expected_sop_class_uid=request.sop_class_uid,
            expected_sop_instance_uid=request.sop_instance_uid,
        )
        return status.for_result(outcome.result), outcome.label

    def open_spool(self, command: dimse.Command, transfer_syntax: str, calling_ae: str) -> DatasetSpool:
        """Start the instance file of a large data set: its file meta, from the C-STORE request's UIDs."""
        return self.intake.open_spool(
            command.affected_sop_class_uid, command.affected_sop_instance_uid, transfer_syntax, calling_ae
        )


def move_source_hosts(sources: Iterable[Any]) -> dict[str, frozenset[str]]:
    """Return the AE title of each C-MOVE prior source with the addresses it may connect from.

    A source's ``host`` is taken as written and as resolved now (a name the resolver does not know adds
    nothing), so admission, which runs on the event loop, never waits for a resolver.

    Parameters
    ----------
    sources : iterable of PriorSource
        ``settings.prior_sources`` (only ``kind="dimse"`` with ``retrieve="move"`` count).
    """
    found: dict[str, set[str]] = {}
    for source in sources:
        if source.kind != "dimse" or source.retrieve != "move" or not source.ae_title or not source.host:
            continue
        addresses = found.setdefault(source.ae_title, set())
        addresses.add(source.host)
        try:
            addresses.update(str(info[4][0]) for info in socket.getaddrinfo(source.host, None))
        except (OSError, UnicodeError):
            log.warning("prior source %r: host does not resolve; only its literal address is admitted", source.name)
    return {ae: frozenset(hosts) for ae, hosts in found.items()}


def _transport(peer: Peer) -> dict[str, str]:
    """Audit detail of the connection's TLS: version and the client certificate's subject, if any."""
    if not peer.tls_version:
        return {}
    return {"tls": peer.tls_version, "peer_certificate": peer.tls_subject or "none"}
