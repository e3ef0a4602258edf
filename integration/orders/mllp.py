"""The HL7 order listener: MLLP (optionally over TLS) on hl7apy's server, one transaction per message.

hl7apy's :class:`~hl7apy.mllp.MLLPServer` gives the threaded TCP server and its request handler; two things
of its handler do not fit a RIS feed, so :meth:`_Handler.handle` replaces them and keeps the rest: it answers
one message and closes the connection (a RIS sends thousands over one), and it reads byte by byte with no
limit.  Here a connection carries messages until the peer closes it or stays idle ``mllp_timeout`` seconds,
and a message larger than ``max_hl7_message_bytes`` is read on to its end block into nowhere (only its MSH is
kept, to address the AR) -- so a well-behaved client that sends it whole still reads its answer -- and a
sender that streams more than :data:`DRAIN_FACTOR` times the limit is disconnected.

Each message: its MSH is read, the sender is checked against ``hl7_senders`` (application^facility, and the
host when the entry names hosts), type/version are checked, the bytes are decoded (MSH-18), the orders are
parsed; then one database transaction asks :func:`~integration.store.inbound.remembered_ack` (a message sent
again gets its first answer and changes nothing), applies the orders with
:func:`~integration.store.orders.apply_order`, remembers the answer and commits; only then is the ACK sent.
Withdrawn drafts (a cancel after drafting) are handed to
:func:`integration.export.corrections.withdraw_reports` after the commit; a failure there is logged and does
not turn the AA into an error (the order is cancelled; the withdrawal can be sent again by an operator).
A database failure is answered AR 207 and remembered nowhere, so the RIS sends the message again.

Logs name the sender, control id, message type and codes, never patient data.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
from datetime import UTC, datetime
from typing import Any

from hl7apy.mllp import MLLPRequestHandler, MLLPServer
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.dicom.tls import TlsConfigError, handshake_failure, server_context
from integration.orders.hl7_header import CHARSETS, Header, HL7Error, build_ack, check_header, decode, read_header
from integration.orders.hl7_in import parse_orders, warm_up
from integration.orders.order import OrderMessage
from integration.store.inbound import AlreadyAnswered, remember_ack, remembered_ack
from integration.store.orders import ANOTHER_SITE, NOT_HELD, STOPPED, apply_order
from integration.store.session import session_scope
from integration.store.tables import Site

log = logging.getLogger(__name__)

#: A sender streaming more than this many times ``max_hl7_message_bytes`` without an end block is cut off.
DRAIN_FACTOR = 32
#: Bytes of a too-large message kept to read its MSH from.
HEADER_BYTES = 4096
#: Table 0357 code of each refusal of :func:`~integration.store.orders.apply_order` (207 for any other).
REFUSAL_CODES = {NOT_HELD: 204, ANOTHER_SITE: 204, STOPPED: 206}
_REMEMBERED = re.compile(r"^(\d{3}) (.*)$", re.DOTALL)


class OrderListenerConfigError(ValueError):
    """The MLLP settings cannot be used (no port, a TLS file)."""


class OrderListener:
    """Listen for ORM^O01 / OMI^O23 over MLLP and apply them (see the module docstring).

    Parameters
    ----------
    settings : Settings
        ``mllp_port`` (required), ``mllp_host``, ``hl7_senders``, ``mllp_tls_*``, ``max_hl7_message_bytes``,
        ``mllp_timeout`` and ``database_url``.

    Raises
    ------
    OrderListenerConfigError
        When ``mllp_port`` is unset, or a TLS file cannot be used, or only one of certificate and key is set.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.mllp_port is None:
            raise OrderListenerConfigError("the HL7 listener needs PACSVLM_MLLP_PORT")
        if (settings.mllp_tls_certificate is None) != (settings.mllp_tls_private_key is None):
            raise OrderListenerConfigError("MLLP TLS needs both PACSVLM_MLLP_TLS_CERTIFICATE and _PRIVATE_KEY")
        self.settings = settings
        self.tls_context: ssl.SSLContext | None = None
        if settings.mllp_tls_certificate is not None and settings.mllp_tls_private_key is not None:
            try:
                self.tls_context = server_context(
                    settings.mllp_tls_certificate, settings.mllp_tls_private_key, settings.mllp_tls_ca_certificates
                )
            except TlsConfigError as exc:
                raise OrderListenerConfigError(f"MLLP TLS: {exc}") from None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # SQLite takes one writer at a time: queueing here beats its busy handler's growing sleeps.
        sqlite = make_url(settings.database_url).get_backend_name() == "sqlite"
        self._one_writer: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if sqlite else contextlib.nullcontext()
        )

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self) -> OrderListener:
        """Bind and serve in a background thread (raises OSError when the port cannot be bound)."""
        assert self.settings.mllp_port is not None
        warm_up()
        self._server = _Server(self, self.settings.mllp_host, self.settings.mllp_port, self.settings.mllp_timeout)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,), name="mllp", daemon=True)
        self._thread.start()
        if not self.settings.hl7_senders:
            log.warning("no HL7 sender is allowed (PACSVLM_HL7_SENDERS is empty): every order will be refused")
        tls = "" if self.tls_context is None else " (TLS)"
        log.info("HL7 order listener on %s:%d%s", self.settings.mllp_host, self.port, tls)
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections, release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    # --- one message -------------------------------------------------------------------------------------

    def answer(self, data: bytes, host: str, *, too_large: bool = False) -> bytes:
        """Handle one message (the bytes between the MLLP start and end blocks); return the encoded ACK."""
        header: Header | None = None
        try:
            header = read_header(data)
            self._check_sender(header, host)
            if too_large:
                limit = self.settings.max_hl7_message_bytes
                raise HL7Error("AR", 207, f"message larger than {limit} bytes")
            check_header(header)
            code, text, error_code, withdrawn = self._apply(header, decode(data, header))
        except HL7Error as exc:
            code, text, error_code, withdrawn = exc.ack_code, exc.text, exc.error_code, []
        who = "-" if header is None else header.sender
        control_id = "-" if header is None else header.control_id
        log.info(
            "HL7 %s from %s (%s) control id %s: %s %s", _type(header), who, host, control_id, code, error_code or ""
        )
        if withdrawn:
            self._withdraw(withdrawn)
        return _encode(build_ack(header, code, text, error_code), header)

    def _check_sender(self, header: Header, host: str) -> None:
        senders = self.settings.hl7_senders
        entry = senders.get(header.sender) or senders.get(header.sending_application)
        if entry is None:
            raise HL7Error("AR", 207, "sender (MSH-3/MSH-4) is not allowed to send orders")
        if entry.hosts and host not in entry.hosts:
            raise HL7Error("AR", 207, "sender (MSH-3/MSH-4) is not allowed from this address")

    def _apply(self, header: Header, text: str) -> tuple[str, str | None, int | None, list[int]]:
        """Parse and apply in one transaction; return (ACK code, text, table 0357 code, withdrawn report ids)."""
        try:
            orders, problem = parse_orders(text, header), None
        except HL7Error as exc:
            orders, problem = [], exc
        for _attempt in range(3):
            try:
                with self._one_writer, session_scope(self.settings.database_url) as session:
                    remembered = remembered_ack(session, header.sender, header.control_id)
                    if remembered is not None:
                        log.info("HL7 control id %s from %s answered before", header.control_id, header.sender)
                        return (*_replay(*remembered), [])
                    if problem is not None and problem.ack_code == "AR":
                        raise problem
                    result = (
                        ("AE", problem.text, problem.error_code, [], None)
                        if problem is not None
                        else self._apply_orders(session, header, orders)
                    )
                    code, reason, error_code, withdrawn, order_id = result
                    stored = reason if error_code is None else f"{error_code} {reason}"
                    remember_ack(session, header.sender, header.control_id, header.message_type, code, stored, order_id)
                return code, reason, error_code, withdrawn
            except (AlreadyAnswered, IntegrityError):
                continue  # a copy of this message (or an order it creates) committed first: ask again
            except SQLAlchemyError as exc:
                log.error(
                    "HL7 control id %s from %s not stored: %s", header.control_id, header.sender, type(exc).__name__
                )
                break
        raise HL7Error("AR", 207, "the order could not be stored now; send it again")

    def _apply_orders(
        self, session: Session, header: Header, orders: list[OrderMessage]
    ) -> tuple[str, str | None, int | None, list[int], int | None]:
        site_id = self._site_id(session, header)
        now = datetime.now(UTC)
        withdrawn: list[int] = []
        outcomes: list[str] = []
        # A refused order changes nothing; with several orders in one message, those applied before it are
        # undone (a savepoint, taken only then: it costs two round trips).
        savepoint = session.begin_nested() if len(orders) > 1 else None
        order_id = None
        for message in orders:
            result = apply_order(session, message, source="hl7", sender=header.sender, site_id=site_id, now=now)
            if result.outcome == "refused":
                if savepoint is not None:
                    savepoint.rollback()
                reason = result.reason or "the order cannot be applied"
                code = REFUSAL_CODES.get(result.refusal or "", 207)
                return "AE", reason, code, [], result.order_id
            withdrawn.extend(result.withdrawn_reports)
            outcomes.append(result.outcome)
            order_id = result.order_id
        if savepoint is not None:
            savepoint.commit()
        return "AA", f"order {', '.join(dict.fromkeys(outcomes))}", None, withdrawn, order_id

    def _site_id(self, session: Session, header: Header) -> int | None:
        senders = self.settings.hl7_senders
        entry = senders.get(header.sender) or senders.get(header.sending_application)
        if entry is None or entry.site is None:
            return None
        site_id = session.scalar(select(Site.id).where(Site.code == entry.site))
        if site_id is None:
            log.warning("HL7 sender %s names site %r, which does not exist", header.sender, entry.site)
            raise HL7Error("AR", 207, "the sender's site is not configured here")
        return int(site_id)

    def _withdraw(self, report_ids: list[int]) -> None:
        try:
            from integration.export.corrections import withdraw_reports

            withdraw_reports(self.settings, report_ids, "order cancelled by the RIS")
        except Exception:  # the cancel is committed; the withdrawal is the operator's to resend
            log.exception("withdrawing reports %s after an order cancel failed", report_ids)


def _type(header: Header | None) -> str:
    return "message" if header is None or not header.message_type else header.message_type


def _replay(code: str, stored: str | None) -> tuple[str, str | None, int | None]:
    match = _REMEMBERED.match(stored or "")
    if code != "AA" and match is not None:
        return code, match.group(2), int(match.group(1))
    return code, stored, None


def _encode(ack: str, header: Header | None) -> bytes:
    codec = CHARSETS.get(header.charset, "utf-8") if header is not None else "utf-8"
    return ack.encode(codec, errors="replace")


class _Server(MLLPServer):  # type: ignore[misc]
    """hl7apy's threaded MLLP server, with our handler, daemon threads and a register of open connections."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, listener: OrderListener, host: str, port: int, timeout: float) -> None:
        self.listener = listener
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(host, port, {}, timeout=timeout, request_handler_class=_Handler)

    def close_connections(self) -> None:
        with self.lock:
            for connection in list(self.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(MLLPRequestHandler):  # type: ignore[misc]
    """One connection: the TLS handshake, then messages until the peer closes or idles out."""

    server: _Server
    request: socket.socket

    def setup(self) -> None:
        self.refused = False
        self.request.settimeout(self.server.timeout)
        context = self.server.listener.tls_context
        if context is not None:
            try:
                self.request = context.wrap_socket(self.request, server_side=True)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError; the socket is closed
                log.warning("MLLP TLS from %s refused: %s", self.client_address[0], handshake_failure(exc))
                self.refused = True
                return
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.request)

    def finish(self) -> None:
        if self.refused:
            return
        with self.server.lock:
            self.server.connections.discard(self.request)
        with contextlib.suppress(OSError):
            super().finish()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.close()

    def handle(self) -> None:
        if self.refused:
            return
        host = self.client_address[0]
        try:
            while True:
                frame = self._read_frame()
                if frame is None:
                    return
                data, too_large = frame
                ack = self.server.listener.answer(data, host, too_large=too_large)
                self.wfile.write(self.sb + ack + self.eb + self.cr)
        except (OSError, TimeoutError):
            return  # idle past mllp_timeout, reset by the peer, or closed by stop()

    def _read_frame(self) -> tuple[bytes, bool] | None:
        """Read one framed message: (its bytes or, when too large, only its start; whether it was too large)."""
        while True:  # skip line ends between frames; anything else is not MLLP
            byte = self.rfile.read(1)
            if not byte:
                return None
            if byte == self.sb:
                break
            if byte not in b"\r\n":
                log.info("MLLP connection from %s sent data outside a frame; closed", self.client_address[0])
                return None
        limit = self.server.listener.settings.max_hl7_message_bytes
        kept, size, after_eb = bytearray(), 0, False
        end_block = self.eb + self.cr
        while True:
            buffered = self.rfile.peek(65536)
            if not buffered:
                return None  # closed in the middle of a message
            if after_eb and buffered[:1] == self.cr:
                self.rfile.read(1)
                del kept[-1:]
                size -= 1
                break
            end = buffered.find(end_block)
            chunk = self.rfile.read(len(buffered) if end < 0 else end + 2)
            body = chunk if end < 0 else chunk[:-2]
            size += len(body)
            if size <= limit + 1:  # + 1: an end block split across reads leaves its EB in kept
                kept += body
            elif len(kept) > HEADER_BYTES:
                del kept[HEADER_BYTES:]
            if size > DRAIN_FACTOR * limit:
                log.warning(
                    "MLLP message from %s over %d bytes without an end block; closed", self.client_address[0], size
                )
                return None
            if end >= 0:
                break
            after_eb = chunk.endswith(self.eb)
        return bytes(kept), size > limit
