"""One DICOM association on the listener, as an asyncio task.

The task negotiates the association, then reads PDUs, reassembles DIMSE
messages and answers C-ECHO, C-STORE, and the N-CREATE and N-SET of MPPS
(their small data set is kept in memory, at most one MiB, and decoded in a
worker thread by :class:`~integration.dicom.mpps_scp.MppsSCP`).  Storing runs in a worker thread
(file fsync and the database commit block), so many associations proceed
at once while the event loop only moves bytes.

Nothing is decoded before the requestor is known: the A-ASSOCIATE-RQ's fixed
fields (calling and called AE) are checked, and a slot is taken, before the
rest of the request is read; the rest is decoded in a separate process
(:mod:`integration.dicom.negotiation`).  A
message's command set is bounded, and a data set is gathered once, into one
buffer (never fragments plus a joined copy); past one MiB it goes to its
instance file as it arrives (:mod:`integration.intake.spool`), so one
association holds at most about one MiB whatever it sends.

Timeouts (PS3.8 9.1.4 leaves them to the implementation): an association may
wait ``network_timeout`` for any PDU, and once a DIMSE message has begun each
next PDU of it must also come within ``dimse_timeout``; either one passed ends
the association with an A-ABORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from integration.dicom import dimse, status
from integration.dicom import upper_layer as ul
from integration.dicom.mpps_scp import MAX_STEP_DATASET_BYTES, MppsSCP, StepRequest
from integration.dicom.negotiation import AcceptedContext, Negotiated
from integration.dicom.peer import AssociationService, Gatekeeper, Limits, Peer, Rejection, StoreRequest
from integration.intake.spool import SPOOL_THRESHOLD, DatasetSpool

log = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
#: Longest wait for a requestor to close the connection after our rejection or release answer.
ARTIM_SECONDS = 5.0
#: Largest command set (a C-STORE-RQ is a few hundred bytes; the biggest DIMSE commands stay under 1 KiB).
MAX_COMMAND_BYTES = 64 * 1024
#: What each PDV item is charged beyond its bytes when a data set's memory is counted (its Python objects),
#: so a stream of empty or one-byte fragments cannot grow memory without growing the count.
PDV_OVERHEAD_BYTES = 256
#: DIMSE-N requests (MPPS) whose small data set is kept in memory and handed to the MPPS service.
_NORMALIZED = frozenset({dimse.N_CREATE_RQ, dimse.N_SET_RQ})
_KEEPS_DATASET = frozenset({dimse.C_STORE_RQ, *_NORMALIZED})


class _Stalled(TimeoutError):
    """The peer sent nothing within the timeout that applied (its text says which, when not the idle one)."""


@dataclass
class _Message:
    """A DIMSE message being reassembled from PDV fragments."""

    context_id: int
    command_fragments: list[memoryview] = field(default_factory=list)
    command_bytes: int = 0
    command: dimse.Command | None = None
    #: The data set received so far (not yet spooled), gathered once as it arrives.
    dataset: bytearray = field(default_factory=bytearray)
    #: Bytes of the data set received, and what the part held in memory is charged.
    dataset_bytes: int = 0
    held_bytes: int = 0
    oversized: bool = False
    #: Keep the data set (a C-STORE, an N-CREATE or N-SET); any other command's data set is counted and dropped.
    keeps_dataset: bool = False
    spool: DatasetSpool | None = None
    spool_failed: bool = False


class Association:
    """Serve one accepted TCP connection until release, abort or timeout.

    Parameters
    ----------
    reader, writer : asyncio streams
        The connection.
    service : AssociationService
        Admission, storage and audit.
    limits : Limits
        Protocol limits.
    run_blocking : callable
        Runs a blocking callable off the event loop and returns an awaitable of its result.
    gate : Gatekeeper
        Association slots, the pending-connection count, rejections and negotiation.
    steps : MppsSCP, optional
        The MPPS service (N-CREATE / N-SET); without it those requests are unrecognized operations.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: AssociationService,
        limits: Limits,
        run_blocking: Callable[..., Awaitable[Any]],
        gate: Gatekeeper,
        steps: MppsSCP | None = None,
    ) -> None:
        self.reader = reader
        self.steps = steps
        self.writer = writer
        self.service = service
        self.limits = limits
        self.run_blocking = run_blocking
        self.gate = gate
        address = writer.get_extra_info("peername") or ("?", 0)
        self.peer = Peer(calling_ae="", address=str(address[0]), port=int(address[1]))
        self.accepted: dict[int, AcceptedContext] = {}
        self.peer_max_length = 0
        self.storing = False
        self._pending = True
        self._message: _Message | None = None

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
        except TimeoutError as exc:
            peer, what = self.peer, str(exc) or "idle past the timeout"
            log.warning("association with %r at %s aborted: %s", peer.calling_ae, peer.source, what)
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
            self._settle()
            self._drop_spool()
            if holds_slot:
                self.gate.release_slot(self.peer.calling_ae, self.peer.address)
                if how:
                    await asyncio.shield(self.run_blocking(self.service.ended, self.peer, how))

    def _settle(self) -> None:
        if self._pending:
            self._pending = False
            self.gate.settled(self.peer.address)

    async def _negotiate(self) -> Negotiated | None:
        """Read the A-ASSOCIATE-RQ and accept or reject it; None when rejected.

        The fixed fields are checked (and a slot taken) before the rest is read, and the rest is
        decoded off the event loop, so a request that will be refused costs no decoding at all.
        """
        acse_timeout = self.limits.acse_timeout
        pdu_type, length = await asyncio.wait_for(
            ul.read_pdu_header(self.reader, self.limits.max_pdu_length), acse_timeout
        )
        if pdu_type != ul.ASSOCIATE_RQ:
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}", ul.ABORT_UNEXPECTED_PDU)
        if length < ul.ASSOCIATE_RQ_FIXED_LENGTH:
            raise ul.ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes is too short")
        fixed = await asyncio.wait_for(self.reader.readexactly(ul.ASSOCIATE_RQ_FIXED_LENGTH), acse_timeout)
        header = ul.parse_request_header(fixed)
        self.peer.calling_ae = header.calling_ae
        rejection = self.service.admit(header, self.peer)
        rest = await asyncio.wait_for(self.reader.readexactly(length - ul.ASSOCIATE_RQ_FIXED_LENGTH), acse_timeout)
        if rejection is None:
            over_budget = self.gate.spend(self.peer.address, length)
            busy = over_budget or self.gate.take_slot(header.calling_ae, self.peer.address)
            if busy is not None:
                rejection = Rejection(
                    busy,
                    result=ul.REJECTED_TRANSIENT,
                    source=ul.SOURCE_PRESENTATION,
                    diagnostic=ul.REASON_LOCAL_LIMIT,
                    abusive=over_budget is not None,
                )
        request: Negotiated | None = None
        if rejection is None:
            try:
                request = await self.gate.negotiate(fixed + rest)
            except BaseException:
                self.gate.release_slot(header.calling_ae, self.peer.address)
                raise
            if request.application_context != ul.APPLICATION_CONTEXT:
                self.gate.release_slot(header.calling_ae, self.peer.address)
                rejection = Rejection("application context not supported", diagnostic=ul.REASON_APPLICATION_CONTEXT)
        self._settle()
        if rejection is not None:
            self._send(ul.associate_rj(rejection.result, rejection.source, rejection.diagnostic))
            await self.writer.drain()
            self.gate.rejected(self.peer, rejection)
            await self._await_peer_close()
            return None
        assert request is not None
        self.accepted = request.accepted
        self.peer_max_length = request.max_length
        self._send(request.answer)
        return request

    async def _serve(self) -> str:
        """Exchange DIMSE messages until the peer releases or aborts; return how it ended."""
        while True:
            limits = self.limits
            dimse_bound = self._message is not None and limits.dimse_timeout < limits.network_timeout
            timeout = limits.dimse_timeout if dimse_bound else limits.network_timeout
            try:
                pdu_type, body = await asyncio.wait_for(ul.read_pdu(self.reader, limits.max_pdu_length), timeout)
            except TimeoutError:
                raise _Stalled("a DIMSE message stalled past the DIMSE timeout" if dimse_bound else "") from None
            if pdu_type == ul.RELEASE_RQ:
                if self._message is not None:
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
                self._message = await self._take(self._message, pdv)

    async def _take(self, message: _Message | None, pdv: ul.Pdv) -> _Message | None:
        """Add one PDV to the message being reassembled; dispatch it when complete."""
        if pdv.context_id not in self.accepted:
            raise ul.ProtocolError(f"PDV on presentation context {pdv.context_id}, which was not accepted")
        if message is None:
            message = self._message = _Message(pdv.context_id)
        elif pdv.context_id != message.context_id:
            raise ul.ProtocolError("PDV fragments of one message on different presentation contexts")
        if pdv.is_command:
            return await self._take_command(message, pdv)
        if message.command is None:
            raise ul.ProtocolError("data set fragment before its command set", ul.ABORT_UNEXPECTED_PDU)
        if not message.command.has_dataset:
            raise ul.ProtocolError("data set fragment for a command without a data set", ul.ABORT_UNEXPECTED_PDU)
        message.dataset_bytes += len(pdv.fragment)
        if message.dataset_bytes > self.limits.max_dataset_bytes:
            if not message.oversized:
                message.oversized = True
                message.dataset = bytearray()  # keep reading, answer a failure at the end
                self._drop_spool(message)
        elif message.keeps_dataset and not message.oversized and not message.spool_failed:
            message.dataset += pdv.fragment
            message.held_bytes += len(pdv.fragment) + PDV_OVERHEAD_BYTES
            if message.held_bytes > SPOOL_THRESHOLD:
                if message.command.command_field == dimse.C_STORE_RQ:
                    await self._spool(message)
                elif message.held_bytes > MAX_STEP_DATASET_BYTES:  # an N-CREATE/N-SET stays in memory: capped
                    message.oversized, message.dataset = True, bytearray()
        if not pdv.is_last:
            return message
        if message.spool is not None:
            await self._spool(message)
        await self._dispatch(message)
        return None

    async def _take_command(self, message: _Message, pdv: ul.Pdv) -> _Message | None:
        if message.command is not None:
            raise ul.ProtocolError("command fragment after the command set was complete", ul.ABORT_UNEXPECTED_PDU)
        message.command_bytes += len(pdv.fragment) + PDV_OVERHEAD_BYTES
        if message.command_bytes > MAX_COMMAND_BYTES:
            raise ul.ProtocolError(f"command set larger than {MAX_COMMAND_BYTES} bytes")
        message.command_fragments.append(pdv.fragment)
        if not pdv.is_last:
            return message
        try:
            message.command = dimse.decode_command(b"".join(message.command_fragments))
        except dimse.InvalidCommand as exc:
            raise ul.ProtocolError(f"undecodable command set: {exc}") from exc
        message.command_fragments.clear()
        if message.command.has_dataset:
            message.keeps_dataset = message.command.command_field in _KEEPS_DATASET
            return message
        await self._dispatch(message)
        return None

    async def _spool(self, message: _Message) -> None:
        """Move the fragments held in memory to the message's spool file (started on first use)."""
        command = message.command
        assert command is not None
        held, message.dataset, message.held_bytes = message.dataset, bytearray(), 0
        if message.spool is None:
            transfer_syntax = self.accepted[message.context_id].transfer_syntax
            try:
                message.spool = await self.run_blocking(
                    self.service.open_spool, command, transfer_syntax, self.peer.calling_ae
                )
            except OSError as exc:
                log.error("C-STORE from %r: cannot spool its data set: %s", self.peer.calling_ae, exc)
                message.spool_failed = True
                return
        spool = message.spool
        assert spool is not None
        await self.run_blocking(spool.append, [held])
        if spool.error is not None:
            message.spool_failed = True
            self._drop_spool(message)

    def _drop_spool(self, message: _Message | None = None) -> None:
        """Remove a spool file that will not become an instance (too large, failed, association gone)."""
        message = message or self._message
        if message is not None and message.spool is not None:
            message.spool.close()
            message.spool = None

    async def _dispatch(self, message: _Message) -> None:
        """Answer a complete request (a C-CANCEL-RQ gets no answer, PS3.7 9.3.2.3)."""
        command = message.command
        assert command is not None
        context = self.accepted[message.context_id]
        if command.command_field == dimse.C_CANCEL_RQ:
            # We run no operation a cancel could stop (C-ECHO and C-STORE answer at once): nothing to do.
            log.info("C-CANCEL-RQ from %r at %s: nothing to cancel", self.peer.calling_ae, self.peer.source)
            return
        if command.command_field == dimse.C_ECHO_RQ:
            verification = context.abstract_syntax == VERIFICATION_SOP_CLASS
            code = status.SUCCESS if verification else status.SOP_CLASS_NOT_SUPPORTED
        elif command.command_field == dimse.C_STORE_RQ:
            code = await self._store(message, context)
        elif command.command_field in _NORMALIZED and self.steps is not None:
            code, command = await self._step(message, context)
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

    async def _store(self, message: _Message, context: AcceptedContext) -> int:
        command = message.command
        assert command is not None
        calling_ae = self.peer.calling_ae
        refusal: int | None = None
        if message.oversized:
            log.warning(
                "C-STORE from %r refused: data set of %d bytes exceeds the limit of %d",
                calling_ae,
                message.dataset_bytes,
                self.limits.max_dataset_bytes,
            )
            refusal = status.OUT_OF_RESOURCES
        elif message.spool_failed:
            refusal = status.OUT_OF_RESOURCES  # logged where the spool failed
        elif command.affected_sop_class_uid != context.abstract_syntax:
            log.warning("C-STORE from %r refused: SOP class differs from the presentation context's", calling_ae)
            refusal = status.SOP_CLASS_NOT_SUPPORTED
        if refusal is not None:
            self._drop_spool(message)
            self.peer.statuses["refused"] += 1
            return refusal
        request = StoreRequest(
            sop_class_uid=command.affected_sop_class_uid,
            sop_instance_uid=command.affected_sop_instance_uid,
            transfer_syntax=context.transfer_syntax,
            dataset=message.dataset,
            calling_ae=calling_ae,
            spool=message.spool,
        )
        message.spool, message.dataset = None, bytearray()  # the service owns (and closes) them now
        self.storing = True
        try:
            code, outcome = await asyncio.shield(self.run_blocking(self.service.store_instance, request))
        finally:
            self.storing = False
        self.peer.statuses[outcome] += 1
        return int(code)

    async def _step(self, message: _Message, context: AcceptedContext) -> tuple[int, dimse.Command]:
        """Answer an MPPS N-CREATE or N-SET: checked, decoded and recorded by the MPPS service in a worker thread."""
        command = message.command
        assert command is not None and self.steps is not None
        request = StepRequest(
            command_field=command.command_field,
            sop_class_uid=command.affected_sop_class_uid,
            context_sop_class_uid=context.abstract_syntax,
            sop_instance_uid=command.affected_sop_instance_uid,
            transfer_syntax=context.transfer_syntax,
            dataset=b"" if message.oversized else message.dataset,
            calling_ae=self.peer.calling_ae,
            oversized_bytes=message.dataset_bytes if message.oversized else 0,
        )
        message.dataset = bytearray()
        answer = await asyncio.shield(self.run_blocking(self.steps.handle, request))
        if answer.sop_instance_uid != command.affected_sop_instance_uid:
            command = dataclasses.replace(command, affected_sop_instance_uid=answer.sop_instance_uid)
        return answer.status, command

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
