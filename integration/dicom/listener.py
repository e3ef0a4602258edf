"""The DICOM listener (storage SCP): C-ECHO and C-STORE into the durable store.

Handlers validate, store, commit and answer; analysis happens elsewhere.  A
C-STORE is answered with success only after the file is on disk (fsync,
atomic link) and its database row is committed; any failure leaves nothing
half-written and answers a named failure status.

The network side is an asyncio server (:mod:`integration.dicom.association`)
running in its own thread; each C-STORE is stored in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.dicom import status
from integration.dicom import upper_layer as ul
from integration.dicom.assembly import StudyAssembler
from integration.dicom.association import (
    VERIFICATION_SOP_CLASS,
    Association,
    Limits,
    Peer,
    Rejection,
    StoreRequest,
)
from integration.dicom.header import SopClassMismatch, file_meta_bytes, read_header
from integration.dicom.storage import InstanceLocks, InstanceStore, StorageError, StorageFull, StoredFile
from integration.dicom.structure import InvalidInstance
from integration.dicom.tls import TlsConfigError, handshake_failure, server_context, subject_of
from integration.dicom.transfer import ACCEPTED_TRANSFER_SYNTAXES
from integration.store.audit import record_event
from integration.store.ingest import Receipt, audit_conflict, record_instance
from integration.store.session import run_with_reconnect, session_scope
from integration.store.tables import Site, utcnow

log = logging.getLogger(__name__)


class ListenerConfigError(ValueError):
    """The settings do not allow a safe listener (for example, nobody may send)."""


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

    def admit(self, request: ul.AssociationRequest, peer: Peer, *, slots_free: bool) -> Rejection | None:
        """Decide on an association request: called AE, calling AE and its hosts, free slots.

        Parameters
        ----------
        request : AssociationRequest
            The decoded A-ASSOCIATE-RQ.
        peer : Peer
            The requestor's address.
        slots_free : bool
            Whether an association slot was available.

        Returns
        -------
        Rejection or None
            Why it is refused, or None to accept.
        """
        if request.application_context != ul.APPLICATION_CONTEXT:
            return Rejection("application context not supported", diagnostic=ul.REASON_APPLICATION_CONTEXT)
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
        if not slots_free:
            return Rejection(
                "too many concurrent associations",
                result=ul.REJECTED_TRANSIENT,
                source=ul.SOURCE_PRESENTATION,
                diagnostic=ul.REASON_LOCAL_LIMIT,
            )
        return None

    def rejected(self, request: ul.AssociationRequest, peer: Peer, rejection: Rejection) -> None:
        """Log (AE and address) and audit a refused association."""
        calling_ae, reason = request.calling_ae, rejection.reason
        log.warning("association rejected: calling AE %r from %s: %s", calling_ae, peer.source, reason)
        detail = {"reason": rejection.reason, **_transport(peer)}
        self._audit(request.calling_ae, "dicom.association.rejected", peer.source, detail)

    def ended(self, peer: Peer, how: str) -> None:
        """Log and audit what an association stored when it is released or aborted."""
        counts = dict(peer.statuses)
        log.info("association from %r at %s %s: %s", peer.calling_ae, peer.source, how, counts or "no instances")
        detail = {"ended": how, "instances": counts, **_transport(peer)}
        self._audit(peer.calling_ae, "dicom.association", peer.source, detail)

    def _audit(self, calling_ae: str, action: str, source: str, detail: dict[str, Any]) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                record_event(session, actor=f"ae:{calling_ae}", action=action, source=source, detail=detail)
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

    def _store_locked(self, request: StoreRequest) -> tuple[int, str]:
        data, transfer_syntax, calling_ae = request.dataset, request.transfer_syntax, request.calling_ae
        try:
            header = read_header(
                data,
                transfer_syntax,
                expected_sop_class_uid=request.sop_class_uid,
                expected_sop_instance_uid=request.sop_instance_uid,
                max_inflated_bytes=self.settings.max_instance_bytes,
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
            if not stored.created and receipt.added:
                stored = self.store.replace(relative, chunks)  # an orphan of an earlier crash
            outcome["file"] = stored
            return receipt.added

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


def acceptor_contexts() -> list[PresentationContext]:
    """Return the presentation contexts we accept: every storage SOP class, plus verification.

    Returns
    -------
    list of PresentationContext
        Abstract syntaxes with the transfer syntaxes we take for them.
    """
    contexts = [
        build_context(str(cx.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts
    ]
    contexts.append(build_context(VERIFICATION_SOP_CLASS, ACCEPTED_TRANSFER_SYNTAXES[:3]))
    return contexts


class Listener:
    """The running listener: the association server in its own event-loop thread, plus study assembly.

    Parameters
    ----------
    settings : Settings
        The settings.
    assemble : bool
        Also run the study-assembly loop in this process.

    Raises
    ------
    ListenerConfigError
        If no calling AE is allowed and ``accept_any_calling_ae`` is off, or a TLS file cannot be used.

    Notes
    -----
    With ``tls_certificate`` set, ``listen_port`` speaks TLS only, unless ``tls_port`` names another
    port: then TLS is served there and plain TCP stays on ``listen_port``.  A connection on the TLS
    port is handed to an association only after its handshake succeeded (TLS 1.2+, and a client
    certificate from ``tls_ca_certificates`` when that is set); a failed handshake is logged with the
    peer's address and reason and closed, and the listener serves on.
    """

    #: Seconds :meth:`stop` waits for C-STOREs in progress before aborting their associations.
    STOP_GRACE_SECONDS = 30.0

    def __init__(self, settings: Settings, *, assemble: bool = True) -> None:
        if not settings.calling_aes and not settings.accept_any_calling_ae:
            raise ListenerConfigError(
                "no calling AE may send: set PACSVLM_CALLING_AES (JSON, e.g. '{\"MODALITY1\": {}}') "
                "or PACSVLM_ACCEPT_ANY_CALLING_AE=true"
            )
        try:
            self.tls_context = (
                server_context(settings.tls_certificate, settings.tls_private_key, settings.tls_ca_certificates)
                if settings.tls_certificate is not None and settings.tls_private_key is not None
                else None
            )
        except TlsConfigError as exc:
            raise ListenerConfigError(f"DICOM TLS: {exc}") from None
        self.settings = settings
        self.store = InstanceStore(settings.instance_root, fsync=settings.fsync, min_free_bytes=settings.min_free_bytes)
        self.scp = StorageSCP(settings, self.store)
        self.assembler = StudyAssembler(settings) if assemble else None
        self.contexts = acceptor_contexts()
        self.limits = Limits(
            max_pdu_length=settings.max_pdu_length,
            acse_timeout=settings.acse_timeout,
            network_timeout=settings.network_timeout,
            max_dataset_bytes=settings.max_instance_bytes,
        )
        # Storing blocks (fsync, commit): one thread per allowed association, plus audit work.
        self._storers = ThreadPoolExecutor(settings.max_associations + 2, thread_name_prefix="c-store")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._thread: threading.Thread | None = None
        self._active: dict[asyncio.Task[None], Association] = {}
        self._handshaking: set[asyncio.Task[None]] = set()
        self._slots = 0
        self._port = 0
        self._tls_port: int | None = None

    @property
    def port(self) -> int:
        """The bound port of ``listen_port`` (plain TCP, or TLS when that is the only port)."""
        return self._port

    @property
    def tls_port(self) -> int | None:
        """The bound port that speaks TLS, or None without TLS."""
        return self._tls_port

    def start(self) -> None:
        """Sweep leftovers of a crash, bind the port and start serving in a thread."""
        removed = self.store.sweep_incoming()
        if removed:
            log.warning("removed %d partial files left by an earlier stop", removed)
        settings = self.settings
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            if settings.plain_listener:
                self._port = self._bind(loop, settings.listen_port, secure=False)
            if self.tls_context is not None:
                tls_port = settings.tls_port if settings.plain_listener else settings.listen_port
                assert tls_port is not None
                self._tls_port = self._bind(loop, tls_port, secure=True)
                if not settings.plain_listener:
                    self._port = self._tls_port
        except OSError:
            for server in self._servers:
                server.close()
            loop.close()
            self._loop = None
            raise
        self._thread = threading.Thread(target=loop.run_forever, name="dicom-listener", daemon=True)
        self._thread.start()
        if self.assembler is not None:
            self.assembler.start()
        host = settings.listen_host
        if settings.plain_listener:
            log.info("listening as %r on %s:%d (plain TCP)", settings.ae_title, host, self.port)
        if self._tls_port is not None:
            clients = "client certificates required" if settings.tls_ca_certificates else "no client certificates"
            log.info("listening as %r on %s:%d (TLS, %s)", settings.ae_title, host, self._tls_port, clients)

    def _bind(self, loop: asyncio.AbstractEventLoop, port: int, *, secure: bool) -> int:
        """Bind one server socket; connections on it are served by :meth:`_on_connection`."""
        server = loop.run_until_complete(
            asyncio.start_server(
                partial(self._on_connection, secure=secure),
                self.settings.listen_host,
                port,
                limit=self.settings.max_pdu_length + 64,
                reuse_address=True,
            )
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop accepting, let C-STOREs in progress finish, end associations and the assembly loop."""
        if self.assembler is not None:
            self.assembler.stop()
        loop = self._loop
        if loop is None:
            return
        if loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            done.result(timeout=self.STOP_GRACE_SECONDS + 15)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._storers.shutdown(wait=True)
        self.store.close()
        self._loop = None

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._handshaking):
            task.cancel()
        deadline = asyncio.get_running_loop().time() + self.STOP_GRACE_SECONDS
        while any(a.storing for a in self._active.values()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._active):
            task.cancel()
        await asyncio.gather(*self._active, return_exceptions=True)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, secure: bool = False
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        tls: tuple[str, str] | None = None
        if secure:
            self._handshaking.add(task)
            try:
                tls = await self._handshake(writer)
            except asyncio.CancelledError:
                writer.close()
                return
            finally:
                self._handshaking.discard(task)
            if tls is None:
                return
        association = Association(
            reader,
            writer,
            self.scp,
            self.contexts,
            self.limits,
            self._run_blocking,
            self._take_slot,
            self._release_slot,
        )
        if tls is not None:
            association.peer.tls_version, association.peer.tls_subject = tls
        self._active[task] = association
        try:
            await association.run()
        except asyncio.CancelledError:
            pass  # cancelled by stop(); the association has sent its A-ABORT
        finally:
            self._active.pop(task, None)

    async def _handshake(self, writer: asyncio.StreamWriter) -> tuple[str, str] | None:
        """Run the TLS server handshake; return (version, client certificate subject), or None when refused."""
        assert self.tls_context is not None
        address = writer.get_extra_info("peername") or ("?", 0)
        source = f"{address[0]}:{address[1]}"
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await writer.start_tls(self.tls_context, ssl_handshake_timeout=self.limits.acse_timeout)
        except (ConnectionResetError, ssl.SSLEOFError, EOFError, BrokenPipeError):
            # a port probe, or a peer that gave up: nothing to refuse, not worth a warning
            log.info("TLS connection from %s closed by the peer during the handshake", source)
            writer.close()
            return None
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("TLS connection from %s refused: %s", source, handshake_failure(exc))
            writer.close()
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        version = ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else "TLS"
        subject = subject_of(writer.get_extra_info("peercert"))
        log.info("TLS %s from %s, client certificate %s", version, source, subject or "none")
        return version or "TLS", subject

    def _run_blocking(self, function: Any, *args: Any) -> asyncio.Future[Any]:
        assert self._loop is not None
        return self._loop.run_in_executor(self._storers, partial(function, *args))

    def _take_slot(self) -> bool:
        if self._slots >= self.settings.max_associations:
            return False
        self._slots += 1
        return True

    def _release_slot(self) -> None:
        self._slots -= 1
