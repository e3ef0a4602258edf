"""The storage SCP's decisions: who may associate, and each C-STORE into the durable store.

A C-STORE is answered with success only after the file is on disk (fsync,
atomic link) and its database row is committed; any failure leaves nothing
half-written and answers a named failure status.  The network side
(:mod:`integration.dicom.association`) calls in here from worker threads.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.dicom import dimse, status
from integration.dicom import upper_layer as ul
from integration.dicom.header import SopClassMismatch, file_meta_bytes, read_header
from integration.dicom.peer import Peer, Rejection, StoreRequest
from integration.dicom.spool import DatasetSpool
from integration.dicom.storage import InstanceLocks, InstanceStore, StorageError, StorageFull, StoredFile
from integration.dicom.structure import InvalidInstance
from integration.store.audit import record_event
from integration.store.ingest import Receipt, audit_conflict, record_instance
from integration.store.session import run_with_reconnect, session_scope
from integration.store.tables import Site, utcnow

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
        peer = self.settings.calling_aes.get(calling_ae)
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
    store : InstanceStore
        Where instance files go.
    """

    def __init__(self, settings: Settings, store: InstanceStore) -> None:
        self.settings = settings
        self.store = store
        # Serialises concurrent stores of one SOP instance, across threads and with the api's STOW-RS intake
        # on the same store (first copy wins, no lost file).
        self._instance_locks = InstanceLocks(store.root / ".locks")
        self._file_writers = ThreadPoolExecutor(settings.max_associations, thread_name_prefix="instance-writer")
        self._sites = SiteDirectory(settings)

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
            return Rejection("protocol version not supported")
        settings = self.settings
        if not settings.accept_any_calling_ae and request.calling_ae not in settings.calling_aes:
            return Rejection("calling AE not in the allowlist", diagnostic=ul.REASON_CALLING_AE)
        if request.called_ae != settings.ae_title:
            return Rejection(f"called AE is not ours ({request.called_ae!r})", diagnostic=ul.REASON_CALLED_AE)
        allowed = settings.calling_aes.get(request.calling_ae)
        if allowed is not None and allowed.hosts and peer.address not in allowed.hosts:
            return Rejection("connected from a host not allowed for this calling AE", diagnostic=ul.REASON_CALLING_AE)
        return None

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
                record_event(session, actor=actor, action=action, source=source, detail=detail)
        except SQLAlchemyError as exc:
            log.warning("audit event %s not recorded (database): %s", action, type(exc).__name__)

    # -- C-STORE ------------------------------------------------------------------

    def store_instance(self, request: StoreRequest) -> tuple[int, str]:
        """Store one instance durably; return its DIMSE status and an outcome label.

        Parameters
        ----------
        request : StoreRequest
            The C-STORE request's UIDs, transfer syntax, data set bytes and calling AE.

        Returns
        -------
        tuple of (int, str)
            Status code and one of ``stored``, ``duplicate``, ``refused``, ``error``.
        """
        try:
            with self._instance_locks.hold(request.sop_instance_uid):
                return self._store_locked(request)
        except Exception:
            log.exception("C-STORE from %r failed unexpectedly", request.calling_ae)
            return status.PROCESSING_FAILURE, "error"
        finally:
            if request.spool is not None:
                request.spool.close()

    def open_spool(self, command: dimse.Command, transfer_syntax: str, calling_ae: str) -> DatasetSpool:
        """Start the instance file of a large data set: its file meta, from the C-STORE request's UIDs.

        The data set must carry the same UIDs (checked when it is stored), so the meta is the stored file's.
        """
        meta = file_meta_bytes(
            command.affected_sop_class_uid, command.affected_sop_instance_uid, transfer_syntax, calling_ae
        )
        return DatasetSpool(self.store, meta)

    def _store_locked(self, request: StoreRequest) -> tuple[int, str]:
        transfer_syntax, calling_ae, spool = request.transfer_syntax, request.calling_ae, request.spool
        try:
            with spool.dataset() if spool is not None else nullcontext(request.dataset) as data:
                header = read_header(
                    data,
                    transfer_syntax,
                    expected_sop_class_uid=request.sop_class_uid,
                    expected_sop_instance_uid=request.sop_instance_uid,
                    max_inflated_bytes=self.settings.max_instance_bytes,
                    spill_dir=self.store.tmp_dir,
                )
        except SopClassMismatch as exc:
            log.warning("C-STORE from %r refused: %s", calling_ae, exc)
            return status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "refused"
        except InvalidInstance as exc:
            log.warning("C-STORE from %r refused: %s", calling_ae, exc)
            return status.CANNOT_UNDERSTAND, "refused"
        except StorageError as exc:
            log.error("C-STORE from %r refused: %s", calling_ae, exc)
            return status.OUT_OF_RESOURCES, "refused"
        relative = self.store.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        # The file is made durable in a helper thread while the database writes the rows;
        # the rows are committed only once the file is safely on disk.
        if spool is not None:
            size = spool.size
            write = partial(spool.commit, relative)
        else:
            meta = file_meta_bytes(header.sop_class_uid, header.sop_instance_uid, transfer_syntax, calling_ae)
            size = len(meta) + len(request.dataset)
            write = partial(self.store.write, relative, (meta, request.dataset))
        writing = self._file_writers.submit(write)
        outcome: dict[str, StoredFile] = {}

        def file_is_durable(receipt: Receipt) -> bool:
            stored = writing.result()
            if not stored.created and receipt.added:  # an orphan of an earlier crash: ours replaces it
                self.store.remove(relative)
                stored = write()
            outcome["file"] = stored
            return receipt.added

        try:
            receipt = run_with_reconnect(
                self.settings.database_url,
                lambda connection: record_instance(
                    connection,
                    header,
                    storage_path=relative,
                    size_bytes=size,
                    calling_ae=calling_ae,
                    received_at=utcnow(),
                    stable_seconds=self.settings.stable_seconds_for(calling_ae),
                    site_id=self._sites.site_id_for(calling_ae),
                    before_commit=file_is_durable,
                ),
            )
        except StorageFull:
            log.error("C-STORE from %r refused: storage headroom exhausted", calling_ae)
            return status.OUT_OF_RESOURCES, "refused"
        except StorageError as exc:
            log.error("C-STORE from %r refused: %s", calling_ae, exc)
            return status.OUT_OF_RESOURCES, "refused"
        except SQLAlchemyError as exc:
            self._undo_file(writing, outcome)
            log.error("C-STORE from %r refused: database unavailable (%s)", calling_ae, type(exc).__name__)
            return status.OUT_OF_RESOURCES, "refused"
        if receipt.conflict is not None:
            self._undo_file(writing, outcome)
            log.warning("C-STORE from %r refused: %s", calling_ae, receipt.conflict.reason)
            audit_conflict(self.settings.database_url, receipt, header, actor=f"ae:{calling_ae}")
            return status.for_conflict(receipt.conflict), "refused"
        if receipt.duplicate:
            stored = outcome["file"]
            if stored.created:  # same SOP instance already stored under another study/series
                self.store.remove(relative)
            log.info("C-STORE from %r: duplicate SOP instance, first copy kept", calling_ae)
            return status.SUCCESS, "duplicate"
        return status.SUCCESS, "stored"

    def _undo_file(self, writing: Future[StoredFile], outcome: dict[str, StoredFile]) -> None:
        """Remove the file of an instance whose rows were not committed (wait for the writer first)."""
        try:
            stored = outcome.get("file") or writing.result()
        except OSError:
            return  # nothing was linked
        if stored.created:  # ours (written or replacing an orphan); never a first copy we found in place
            self.store.remove(stored.relative_path)


def _transport(peer: Peer) -> dict[str, str]:
    """Audit detail of the connection's TLS: version and the client certificate's subject, if any."""
    if not peer.tls_version:
        return {}
    return {"tls": peer.tls_version, "peer_certificate": peer.tls_subject or "none"}
