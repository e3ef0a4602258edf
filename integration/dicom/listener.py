"""The DICOM listener (storage SCP): C-ECHO and C-STORE into the durable store.

Handlers validate, store, commit and answer; analysis happens elsewhere.  A
C-STORE is answered with success only after the file is on disk (fsync,
atomic link) and its database row is committed; any failure leaves nothing
half-written and answers a named failure status.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, _config, build_context, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.dicom import status
from integration.dicom.assembly import StudyAssembler
from integration.dicom.header import SopClassMismatch, file_meta_bytes, read_header
from integration.dicom.storage import InstanceStore, StorageError, StorageFull, StoredFile
from integration.dicom.structure import InvalidInstance
from integration.dicom.transfer import ACCEPTED_TRANSFER_SYNTAXES
from integration.store.audit import record_event
from integration.store.ingest import Receipt, record_instance
from integration.store.session import run_with_reconnect, session_scope
from integration.store.tables import utcnow

log = logging.getLogger(__name__)


class ListenerConfigError(ValueError):
    """The settings do not allow a safe listener (for example, nobody may send)."""


class NoDelayServer(ThreadedAssociationServer):
    """Association server that disables Nagle on every accepted socket."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection and set TCP_NODELAY (C-STORE responses are small)."""
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


@dataclass
class _AssociationTally:
    calling_ae: str
    source: str
    statuses: Counter[str] = field(default_factory=Counter)


class StorageSCP:
    """Event handlers of the storage SCP, bound to one store and one database.

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
        self._tallies: dict[int, _AssociationTally] = {}
        self._lock = threading.Lock()
        # Serialises concurrent stores of one SOP instance (first copy wins, no lost file).
        self._instance_locks = [threading.Lock() for _ in range(64)]
        self._file_writers = ThreadPoolExecutor(settings.max_associations, thread_name_prefix="instance-writer")

    # -- association life cycle -------------------------------------------------

    def on_established(self, event: Any) -> None:
        """Check the calling AE's allowed hosts; start the association's tally."""
        requestor = event.assoc.requestor
        calling_ae = requestor.ae_title.strip()
        source = f"{requestor.address}:{requestor.port}"
        peer = self.settings.calling_aes.get(calling_ae)
        if peer is not None and peer.hosts and requestor.address not in peer.hosts:
            log.warning("association aborted: calling AE %r connected from %s, not an allowed host", calling_ae, source)
            self._audit(calling_ae, "dicom.association.rejected", source, {"reason": "host not allowed"})
            event.assoc.abort()
            return
        with self._lock:
            self._tallies[id(event.assoc)] = _AssociationTally(calling_ae, source)

    def on_rejected(self, event: Any) -> None:
        """Log (AE and address) and audit an association the ACSE layer rejected."""
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title).strip()
        request = requestor.primitive
        called_ae = str(request.called_ae_title).strip() if request is not None else self.settings.ae_title
        source = f"{requestor.address}:{requestor.port}"
        if calling_ae not in self.settings.calling_aes and not self.settings.accept_any_calling_ae:
            reason = "calling AE not in the allowlist"
        elif called_ae != self.settings.ae_title:
            reason = f"called AE is not ours ({called_ae!r})"
        else:
            reason = "too many concurrent associations"
        log.warning("association rejected: calling AE %r from %s: %s", calling_ae, source, reason)
        self._audit(calling_ae, "dicom.association.rejected", source, {"reason": reason})

    def on_ended(self, event: Any) -> None:
        """Log and audit what an association stored when it is released or aborted."""
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is None:
            return
        ended = "released" if event.event is evt.EVT_RELEASED else "aborted"
        counts = dict(tally.statuses)
        log.info("association from %r at %s %s: %s", tally.calling_ae, tally.source, ended, counts or "no instances")
        self._audit(tally.calling_ae, "dicom.association", tally.source, {"ended": ended, "instances": counts})

    def _audit(self, calling_ae: str, action: str, source: str, detail: dict[str, Any]) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                record_event(session, actor=f"ae:{calling_ae}", action=action, source=source, detail=detail)
        except SQLAlchemyError as exc:
            log.warning("audit event %s not recorded (database): %s", action, type(exc).__name__)

    # -- DIMSE ------------------------------------------------------------------------

    def on_echo(self, event: Any) -> int:
        """Answer C-ECHO."""
        return status.SUCCESS

    def on_store(self, event: Any) -> int:
        """Store one instance durably and answer its status."""
        calling_ae = event.assoc.requestor.ae_title.strip()
        try:
            code, outcome = self._store(event, calling_ae)
        except Exception:
            log.exception("C-STORE from %r failed unexpectedly", calling_ae)
            code, outcome = status.PROCESSING_FAILURE, "error"
        tally = self._tallies.get(id(event.assoc))
        if tally is not None:
            tally.statuses[outcome] += 1
        return code

    def _store(self, event: Any, calling_ae: str) -> tuple[int, str]:
        request = event.request
        transfer_syntax = str(event.context.transfer_syntax)
        lock = self._instance_locks[hash(str(request.AffectedSOPInstanceUID)) % len(self._instance_locks)]
        with lock, request.DataSet.getbuffer() as data:
            return self._store_locked(data, transfer_syntax, request, calling_ae)

    def _store_locked(self, data: memoryview, transfer_syntax: str, request: Any, calling_ae: str) -> tuple[int, str]:
        try:
            header = read_header(
                data,
                transfer_syntax,
                expected_sop_class_uid=str(request.AffectedSOPClassUID),
                expected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
            )
        except SopClassMismatch as exc:
            log.warning("C-STORE from %r refused: %s", calling_ae, exc)
            return status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "refused"
        except InvalidInstance as exc:
            log.warning("C-STORE from %r refused: %s", calling_ae, exc)
            return status.CANNOT_UNDERSTAND, "refused"
        relative = self.store.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        meta = file_meta_bytes(header.sop_class_uid, header.sop_instance_uid, transfer_syntax, calling_ae)
        chunks = (meta, data)
        # The file is made durable in a helper thread while the database writes the rows;
        # the rows are committed only once the file is safely on disk.
        writing = self._file_writers.submit(self.store.write, relative, chunks)
        outcome: dict[str, StoredFile] = {}

        def file_is_durable(receipt: Receipt) -> bool:
            stored = writing.result()
            if not stored.created and not receipt.duplicate:
                stored = self.store.replace(relative, chunks)  # an orphan of an earlier crash
            outcome["file"] = stored
            return not receipt.duplicate

        try:
            receipt = run_with_reconnect(
                self.settings.database_url,
                lambda connection: record_instance(
                    connection,
                    header,
                    storage_path=relative,
                    size_bytes=len(meta) + len(data),
                    calling_ae=calling_ae,
                    received_at=utcnow(),
                    stable_seconds=self.settings.stable_seconds_for(calling_ae),
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

    def handlers(self) -> list[EventHandlerType]:
        """Return the pynetdicom event handler bindings."""
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
        ]


def build_ae(settings: Settings) -> AE:
    """Build the application entity: contexts, allowlist, limits and timeouts.

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    pynetdicom.AE
        The configured AE.

    Raises
    ------
    ListenerConfigError
        If no calling AE is allowed and ``accept_any_calling_ae`` is off.
    """
    if not settings.calling_aes and not settings.accept_any_calling_ae:
        raise ListenerConfigError(
            "no calling AE may send: set PACSVLM_CALLING_AES (JSON, e.g. '{\"MODALITY1\": {}}') "
            "or PACSVLM_ACCEPT_ANY_CALLING_AE=true"
        )
    _config.LOG_HANDLER_LEVEL = "none"  # per-PDU debug formatting costs more than the store itself
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = [] if settings.accept_any_calling_ae else sorted(settings.calling_aes)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_length
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    contexts = [
        build_context(str(cx.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts
    ]
    contexts.extend(VerificationPresentationContexts)
    ae.supported_contexts = contexts
    return ae


class Listener:
    """The running listener: association server plus study assembly.

    Parameters
    ----------
    settings : Settings
        The settings.
    assemble : bool
        Also run the study-assembly loop in this process.
    """

    def __init__(self, settings: Settings, *, assemble: bool = True) -> None:
        self.settings = settings
        self.store = InstanceStore(settings.instance_root, fsync=settings.fsync, min_free_bytes=settings.min_free_bytes)
        self.scp = StorageSCP(settings, self.store)
        self.ae = build_ae(settings)
        self.assembler = StudyAssembler(settings) if assemble else None
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Sweep leftovers of a crash, bind the port and start serving in threads."""
        removed = self.store.sweep_incoming()
        if removed:
            log.warning("removed %d partial files left by an earlier stop", removed)
        server = self.ae.make_server(
            (self.settings.listen_host, self.settings.listen_port),
            evt_handlers=self.scp.handlers(),
            server_class=NoDelayServer,
        )
        self._server = server
        self.ae._servers.append(server)  # so that pynetdicom's shutdown() finds it
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        self._thread.start()
        if self.assembler is not None:
            self.assembler.start()
        log.info("listening as %r on %s:%d", self.settings.ae_title, self.settings.listen_host, self.port)

    def stop(self) -> None:
        """Stop accepting, end the assembly loop and close the port."""
        if self.assembler is not None:
            self.assembler.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
