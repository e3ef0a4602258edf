"""The DICOM listener (storage and MPPS SCP): C-ECHO and C-STORE into the durable store, MPPS N-CREATE/N-SET.

The network side is an asyncio server (:mod:`integration.dicom.association`)
running in its own thread; each C-STORE is stored in a worker thread through
the one intake (:class:`~integration.intake.intake.InstanceIntake`, called by
:class:`~integration.dicom.storage_scp.StorageSCP`); analysis happens elsewhere.
Every connection passes :class:`~integration.dicom.admission.ListenerAdmission`
first, so what an unauthenticated peer can hold (connections, slots, decoding
time, audit rows) is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext

from integration.config import Settings
from integration.dicom.admission import AdmissionLimits, ListenerAdmission
from integration.dicom.association import VERIFICATION_SOP_CLASS, Association
from integration.dicom.mpps_scp import MPPS_SOP_CLASS, MppsSCP
from integration.dicom.negotiation import Negotiator
from integration.dicom.peer import Limits
from integration.dicom.storage_scp import StorageSCP
from integration.dicom.tls import TlsConfigError, handshake_failure, server_context, subject_of
from integration.intake.assembly import StudyAssembler
from integration.intake.intake import InstanceIntake, store_for
from integration.intake.transfer import ACCEPTED_TRANSFER_SYNTAXES
from integration.live_config import live_snapshot
from integration.store.config_tables import ConfigKind

log = logging.getLogger(__name__)

#: An MPPS data set is small and decoded whole: uncompressed, never deflated (no inflating on our side).
MPPS_TRANSFER_SYNTAXES: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class ListenerConfigError(ValueError):
    """The settings do not allow a safe listener (for example, nobody may send)."""


def acceptor_contexts() -> list[PresentationContext]:
    """Return the presentation contexts we accept: every storage SOP class, verification and MPPS.

    Returns
    -------
    list of PresentationContext
        Abstract syntaxes with the transfer syntaxes we take for them.
    """
    contexts = [
        build_context(str(cx.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts
    ]
    contexts.append(build_context(VERIFICATION_SOP_CLASS, ACCEPTED_TRANSFER_SYNTAXES[:3]))
    contexts.append(build_context(MPPS_SOP_CLASS, MPPS_TRANSFER_SYNTAXES))
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
    #: Seconds between reports of gathered rejections.
    REPORT_SECONDS = 10.0

    def __init__(self, settings: Settings, *, assemble: bool = True) -> None:
        live = live_snapshot(settings)
        held = ConfigKind.CALLING_AE.value in live.seeded  # kept in the database: it may be filled while we run
        if not live.settings.calling_aes and not settings.accept_any_calling_ae and not held:
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
        self.store = store_for(settings)
        self.intake = InstanceIntake(settings, self.store)
        self.scp = StorageSCP(settings, self.intake)
        self.assembler = StudyAssembler(settings) if assemble else None
        self.mpps = MppsSCP(settings, on_complete=self.assembler.wake if self.assembler is not None else None)
        self.contexts = acceptor_contexts()
        self.limits = Limits(
            max_pdu_length=settings.max_pdu_length,
            acse_timeout=settings.acse_timeout,
            network_timeout=settings.network_timeout,
            dimse_timeout=settings.dimse_timeout,
            max_dataset_bytes=settings.max_instance_bytes,
        )
        # Storing blocks (fsync, commit): one thread per allowed association, plus audit work.
        self._storers = ThreadPoolExecutor(settings.max_associations + 2, thread_name_prefix="c-store")
        self.negotiator = Negotiator(self.contexts, settings.max_pdu_length)
        self.admission = ListenerAdmission(
            AdmissionLimits.from_settings(settings), self.scp.report_rejection, self._run_blocking, self.negotiator
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._thread: threading.Thread | None = None
        self._active: dict[asyncio.Task[None], Association] = {}
        self._handshaking: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.TimerHandle | None = None
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
        self._flusher = loop.call_later(self.REPORT_SECONDS, self._flush_reports)
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
        self.admission.close()
        self._storers.shutdown(wait=True)
        self.intake.close()
        self._loop = None

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        if self._flusher is not None:
            self._flusher.cancel()
        self.admission.flush(everything=True)
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
        address = writer.get_extra_info("peername") or ("?", 0)
        verdict = self.admission.open(str(address[0]))
        if verdict.refusal is not None:
            if verdict.hold:
                try:
                    await asyncio.sleep(verdict.hold)  # held unread: a loop of requests waits here
                finally:
                    self.admission.settled(str(address[0]))
            writer.transport.abort()  # no goodbye: this costs us nothing more
            return
        tls: tuple[str, str] | None = None
        if secure:
            self._handshaking.add(task)
            try:
                tls = await self._handshake(writer)
            except asyncio.CancelledError:
                writer.close()
                tls = None
            finally:
                self._handshaking.discard(task)
            if tls is None:
                self.admission.settled(str(address[0]))
                return
        association = Association(
            reader, writer, self.scp, self.limits, self._run_blocking, self.admission, steps=self.mpps
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

    def _flush_reports(self) -> None:
        """Report gathered rejections, then schedule the next report."""
        self.admission.flush()
        assert self._loop is not None
        self._flusher = self._loop.call_later(self.REPORT_SECONDS, self._flush_reports)
