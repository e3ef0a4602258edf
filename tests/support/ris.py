"""A RIS that takes HL7 ORU over MLLP and acknowledges it: hl7apy's MLLP server, not our sender's library.

Our sender frames with python-hl7's client; this RIS is ``hl7apy.mllp.MLLPServer`` (a threading TCP
server, one message per connection) that parses each ORU with hl7apy and answers from a script of
behaviours, one per message received: ``AA``, ``AE``/``AR`` (with MSA-3 and an ERR segment), ``silent``
(no answer until the sender has given up, then the connection closes) or ``wrong-id`` (an AA for another
message control id).  Optionally over TLS (our test certificates), requiring a client certificate.
"""

from __future__ import annotations

import itertools
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

ORU = "ORU^R01^ORU_R01"
#: What the RIS says when it refuses a message (MSA-3), and its ERR-8.
REFUSAL_TEXT = "Unknown patient for order (PID-3)"
REFUSAL_DETAIL = "Order not found in RIS"


@dataclass
class Received:
    """One message the RIS read, with its MSH-10 and the answer it gave."""

    er7: str
    control_id: str
    behaviour: str


@dataclass
class Ris:
    """The RIS: start with ``with Ris(["AA"]) as ris:``; ``ris.port``, ``ris.received``."""

    script: list[str] = field(default_factory=lambda: ["AA"])
    silence_seconds: float = 3.0
    tls: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    _server: MLLPServer | None = None
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def _next(self) -> str:
        index = len(self.received)
        return self.script[index] if index < len(self.script) else self.script[-1]

    def answer(self, er7: str) -> str:
        """Record the message and build the framed answer (raises to close without one)."""
        message = parse_message(er7, find_groups=False)
        control_id = message.msh.msh_10.value
        behaviour = self._next()
        self.received.append(Received(er7, control_id, behaviour))
        if behaviour == "silent":
            time.sleep(self.silence_seconds)
            raise ConnectionAbortedError("the RIS never answers this one")
        ack = Message("ACK", version="2.5.1")
        ack.msh.msh_3 = "RIS"
        ack.msh.msh_4 = "HOSPITAL"
        ack.msh.msh_5 = message.msh.msh_3.value
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = f"RIS{next(self._ids)}"
        ack.msh.msh_11 = "P"
        code = "AA" if behaviour == "wrong-id" else behaviour
        ack.msa.msa_1 = code
        ack.msa.msa_2 = "SOMEONE-ELSE" if behaviour == "wrong-id" else control_id
        if code in ("AE", "AR"):
            ack.msa.msa_3 = REFUSAL_TEXT
            ack.add_segment("ERR")
            ack.err.err_3 = "204^Unknown key identifier^HL70357"
            ack.err.err_4 = "E"
            ack.err.err_8 = REFUSAL_DETAIL
        return str(ack.to_mllp())

    def __enter__(self) -> Ris:
        ris = self

        class Handler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                return ris.answer(self.incoming_message)

        server = MLLPServer("127.0.0.1", 0, {ORU: (Handler,)}, timeout=30)
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def ris_tls_context(certificate: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A TLS server context for the RIS that requires a client certificate issued by ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
