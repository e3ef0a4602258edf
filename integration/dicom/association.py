"""One DICOM association on the listener, as an asyncio task.

The task negotiates the association, then reads PDUs, reassembles DIMSE
messages and answers C-ECHO and C-STORE.  Storing runs in a worker thread
(file fsync and the database commit block), so many associations proceed
at once while the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pynetdicom.presentation import PresentationContext

from integration.dicom import dimse, status
from integration.dicom import upper_layer as ul

log = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
#: Longest wait for a requestor to close the connection after our rejection or release answer.
ARTIM_SECONDS = 5.0


@dataclass(frozen=True)
class Rejection:
    """Why an association request is refused, with the A-ASSOCIATE-RJ fields."""

    reason: str
    result: int = ul.REJECTED_PERMANENT
    source: int = ul.SOURCE_SERVICE_USER
    diagnostic: int = ul.REASON_NO_REASON


@dataclass
class Peer:
    """Who is on the other end of an association."""

    calling_ae: str
    address: str
    port: int
    statuses: Counter[str] = field(default_factory=Counter)
    #: Negotiated TLS version (``TLSv1.3``); empty on plain TCP.
    tls_version: str = ""
    #: Subject of the peer's verified client certificate (``CN=...,O=...``); empty when it sent none.
    tls_subject: str = ""

    @property
    def source(self) -> str:
        """``address:port`` for logs and audit events."""
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class StoreRequest:
    """A complete C-STORE: the request's fields and the data set bytes as received."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes
    calling_ae: str


class AssociationService(Protocol):
    """What an association asks of the listener (implemented by :class:`~integration.dicom.listener.StorageSCP`)."""

    def admit(self, request: ul.AssociationRequest, peer: Peer, *, slots_free: bool) -> Rejection | None:
        """Return why the association is refused, or None to accept it."""

    def rejected(self, request: ul.AssociationRequest, peer: Peer, rejection: Rejection) -> None:
        """Log and audit a refused association (blocking)."""

    def store_instance(self, request: StoreRequest) -> tuple[int, str]:
        """Store one instance; return the DIMSE status and an outcome label (blocking)."""

    def ended(self, peer: Peer, how: str) -> None:
        """Log and audit what an association did when it ends (blocking)."""


@dataclass(frozen=True)
class Limits:
    """Protocol limits and timeouts, from the settings."""

    max_pdu_length: int
    acse_timeout: float
    network_timeout: float
    max_dataset_bytes: int


@dataclass
class _Message:
    """A DIMSE message being reassembled from PDV fragments."""

    context_id: int
    command_fragments: list[memoryview] = field(default_factory=list)
    command: dimse.Command | None = None
    dataset_fragments: list[memoryview] = field(default_factory=list)
    dataset_bytes: int = 0
    oversized: bool = False


class Association:
    """Serve one accepted TCP connection until release, abort or timeout.

    Parameters
    ----------
    reader, writer : asyncio streams
        The connection.
    service : AssociationService
        Admission, storage and audit.
    contexts : sequence of PresentationContext
        The contexts we accept (abstract syntax and transfer syntaxes).
    limits : Limits
        Protocol limits.
    run_blocking : callable
        Runs a blocking callable off the event loop and returns an awaitable of its result.
    slot : callable
        Takes an association slot; returns False when all are taken.
    release_slot : callable
        Gives the slot back.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: AssociationService,
        contexts: Sequence[PresentationContext],
        limits: Limits,
        run_blocking: Callable[..., Awaitable[Any]],
        slot: Callable[[], bool],
        release_slot: Callable[[], None],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.service = service
        self.contexts = contexts
        self.limits = limits
        self.run_blocking = run_blocking
        self._slot = slot
        self._release_slot = release_slot
        address = writer.get_extra_info("peername") or ("?", 0)
        self.peer = Peer(calling_ae="", address=str(address[0]), port=int(address[1]))
        self.accepted: dict[int, PresentationContext] = {}
        self.peer_max_length = 0
        self.storing = False

    async def run(self) -> None:
        """Serve the connection; never raises (errors end the association)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        how = ""
        holds_slot = False
        try:
            request = await self._negotiate()
            if request is None:
                return
            holds_slot = True
            how = await self._serve()
        except ul.ProtocolError as exc:
            log.warning("association with %r at %s aborted: %s", self.peer.calling_ae, self.peer.source, exc)
            self._send(ul.abort(ul.ABORT_SOURCE_PROVIDER, exc.reason))
            how = "aborted"
        except TimeoutError:
            peer = self.peer
            log.warning("association with %r at %s aborted: idle past the timeout", peer.calling_ae, peer.source)
            self._send(ul.abort(ul.ABORT_SOURCE_PROVIDER, ul.ABORT_NOT_SPECIFIED))
            how = "aborted"
        except (asyncio.IncompleteReadError, ConnectionError):
            how = "aborted"  # the peer went away
        except asyncio.CancelledError:
            self._send(ul.abort(ul.ABORT_SOURCE_PROVIDER, ul.ABORT_NOT_SPECIFIED))  # the listener is stopping
            how = "aborted"
            raise
        finally:
            self.writer.close()
            if holds_slot:
                self._release_slot()
                if how:
                    await asyncio.shield(self.run_blocking(self.service.ended, self.peer, how))

    async def _negotiate(self) -> ul.AssociationRequest | None:
        """Read the A-ASSOCIATE-RQ and accept or reject it; None when rejected."""
        pdu_type, body = await asyncio.wait_for(
            ul.read_pdu(self.reader, self.limits.max_pdu_length), self.limits.acse_timeout
        )
        if pdu_type != ul.ASSOCIATE_RQ:
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}", ul.ABORT_UNEXPECTED_PDU)
        request = ul.decode_associate_rq(body)
        self.peer.calling_ae = request.calling_ae
        has_slot = self._slot()
        rejection = self.service.admit(request, self.peer, slots_free=has_slot)
        if rejection is not None:
            if has_slot:
                self._release_slot()
            self._send(ul.associate_rj(rejection.result, rejection.source, rejection.diagnostic))
            await self.writer.drain()
            await self.run_blocking(self.service.rejected, request, self.peer, rejection)
            await self._await_peer_close()
            return None
        answer, self.accepted = ul.accept(request, self.contexts, self.limits.max_pdu_length)
        self.peer_max_length = request.max_length
        self._send(answer)
        return request

    async def _serve(self) -> str:
        """Exchange DIMSE messages until the peer releases or aborts; return how it ended."""
        message: _Message | None = None
        while True:
            pdu_type, body = await asyncio.wait_for(
                ul.read_pdu(self.reader, self.limits.max_pdu_length), self.limits.network_timeout
            )
            if pdu_type == ul.RELEASE_RQ:
                if message is not None:
                    raise ul.ProtocolError("A-RELEASE-RQ in the middle of a message", ul.ABORT_UNEXPECTED_PDU)
                self._send(ul.release_rp())
                await self.writer.drain()
                await self._await_peer_close()
                return "released"
            if pdu_type == ul.ABORT:
                return "aborted"
            if pdu_type != ul.P_DATA_TF:
                raise ul.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", ul.ABORT_UNEXPECTED_PDU)
            for pdv in ul.iter_pdvs(body):
                message = await self._take(message, pdv)

    async def _take(self, message: _Message | None, pdv: ul.Pdv) -> _Message | None:
        """Add one PDV to the message being reassembled; dispatch it when complete."""
        if pdv.context_id not in self.accepted:
            raise ul.ProtocolError(f"PDV on presentation context {pdv.context_id}, which was not accepted")
        if message is None:
            message = _Message(pdv.context_id)
        elif pdv.context_id != message.context_id:
            raise ul.ProtocolError("PDV fragments of one message on different presentation contexts")
        if pdv.is_command:
            if message.command is not None:
                raise ul.ProtocolError("command fragment after the command set was complete", ul.ABORT_UNEXPECTED_PDU)
            message.command_fragments.append(pdv.fragment)
            if not pdv.is_last:
                return message
            try:
                message.command = dimse.decode_command(b"".join(message.command_fragments))
            except dimse.InvalidCommand as exc:
                raise ul.ProtocolError(f"undecodable command set: {exc}") from exc
            if message.command.has_dataset:
                return message
            await self._dispatch(message, b"")
            return None
        if message.command is None:
            raise ul.ProtocolError("data set fragment before its command set", ul.ABORT_UNEXPECTED_PDU)
        if not message.command.has_dataset:
            raise ul.ProtocolError("data set fragment for a command without a data set", ul.ABORT_UNEXPECTED_PDU)
        message.dataset_bytes += len(pdv.fragment)
        if message.dataset_bytes > self.limits.max_dataset_bytes:
            message.oversized = True
            message.dataset_fragments.clear()  # keep reading, answer a failure at the end
        elif not message.oversized:
            message.dataset_fragments.append(pdv.fragment)
        if not pdv.is_last:
            return message
        await self._dispatch(message, b"".join(message.dataset_fragments))
        return None

    async def _dispatch(self, message: _Message, dataset: bytes) -> None:
        """Answer a complete request."""
        command = message.command
        assert command is not None
        context = self.accepted[message.context_id]
        if command.command_field == dimse.C_ECHO_RQ:
            verification = context.abstract_syntax == VERIFICATION_SOP_CLASS
            code = status.SUCCESS if verification else status.SOP_CLASS_NOT_SUPPORTED
        elif command.command_field == dimse.C_STORE_RQ:
            code = await self._store(message, context, dataset)
        else:
            log.warning(
                "DIMSE command 0x%04X from %r at %s is not supported",
                command.command_field,
                self.peer.calling_ae,
                self.peer.source,
            )
            code = status.UNRECOGNIZED_OPERATION
        response = dimse.encode_response(command, code)
        self._send(ul.p_data(message.context_id, response, is_command=True, peer_max_length=self.peer_max_length))
        await self.writer.drain()

    async def _store(self, message: _Message, context: PresentationContext, dataset: bytes) -> int:
        command = message.command
        assert command is not None
        calling_ae = self.peer.calling_ae
        if message.oversized:
            log.warning(
                "C-STORE from %r refused: data set of %d bytes exceeds the limit of %d",
                calling_ae,
                message.dataset_bytes,
                self.limits.max_dataset_bytes,
            )
            self.peer.statuses["refused"] += 1
            return status.OUT_OF_RESOURCES
        if command.affected_sop_class_uid != context.abstract_syntax:
            log.warning("C-STORE from %r refused: SOP class differs from the presentation context's", calling_ae)
            self.peer.statuses["refused"] += 1
            return status.SOP_CLASS_NOT_SUPPORTED
        request = StoreRequest(
            sop_class_uid=command.affected_sop_class_uid,
            sop_instance_uid=command.affected_sop_instance_uid,
            transfer_syntax=str(context.transfer_syntax[0]),
            dataset=dataset,
            calling_ae=calling_ae,
        )
        self.storing = True
        try:
            code, outcome = await asyncio.shield(self.run_blocking(self.service.store_instance, request))
        finally:
            self.storing = False
        self.peer.statuses[outcome] += 1
        return int(code)

    async def _await_peer_close(self) -> None:
        """After A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes the connection (PS3.8 9.1.5/9.2.6).

        Closing first races with the peer reading our answer (it may see the connection drop before the
        PDU and report an abort), so wait for its close, at most the ARTIM time (the ACSE timeout).
        """
        with contextlib.suppress(TimeoutError, ConnectionError):  # anything but a close ends the wait as well
            await asyncio.wait_for(self.reader.read(1024), min(self.limits.acse_timeout, ARTIM_SECONDS))

    def _send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)
