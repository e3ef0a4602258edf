"""Association requests decoded and negotiated in a process of their own.

pynetdicom decodes an A-ASSOCIATE-RQ at about 0.4 ms per KiB (50 ms for one at
our 128 KiB limit) and holds the interpreter lock while it does.  An allowed AE
title is no secret, so a peer that loops maximal requests with one made every
legitimate C-STORE wait for that lock (p50 4x in ``bench.hostile``).  Decoding
large requests in one separate process keeps that work off the listener's
interpreter: it costs at most one core, and the listener's threads never wait
for it.  Only small, plain results come back (AE titles, the A-ASSOCIATE-AC
bytes and the accepted contexts).  Small requests (most modalities propose a
few contexts) are cheaper to decode than to ship, and stay in a thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

from integration.dicom import upper_layer as ul

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcceptedContext:
    """A presentation context we accepted: its abstract syntax and the one transfer syntax chosen."""

    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True)
class Negotiated:
    """What an association request asked for, and our A-ASSOCIATE-AC for it.

    Attributes
    ----------
    calling_ae, called_ae, application_context : str
        From the request.
    max_length : int
        The requestor's Maximum Length Received (0: unlimited).
    answer : bytes
        The encoded A-ASSOCIATE-AC.
    accepted : dict of int to AcceptedContext
        The accepted contexts by presentation context ID.
    """

    calling_ae: str
    called_ae: str
    application_context: str
    max_length: int
    answer: bytes
    accepted: dict[int, AcceptedContext]


def negotiate(body: bytes, contexts: Sequence[PresentationContext], max_length: int) -> Negotiated:
    """Decode an A-ASSOCIATE-RQ's variable field and negotiate it against ``contexts``.

    Parameters
    ----------
    body : bytes
        The request after its 6-byte PDU header.
    contexts : sequence of PresentationContext
        What we accept.
    max_length : int
        Our Maximum Length Received.

    Returns
    -------
    Negotiated
        The request's fields and our answer.

    Raises
    ------
    ProtocolError
        The request cannot be decoded.
    """
    request = ul.decode_associate_rq(body)
    answer, accepted = ul.accept(request, contexts, max_length)
    return Negotiated(
        calling_ae=request.calling_ae,
        called_ae=request.called_ae,
        application_context=request.application_context,
        max_length=request.max_length,
        answer=answer,
        accepted={
            cid: AcceptedContext(str(context.abstract_syntax), str(context.transfer_syntax[0]))
            for cid, context in accepted.items()
        },
    )


_CONTEXTS: list[PresentationContext] = []
_MAX_LENGTH = 0


def _initialise(contexts: list[tuple[str, list[str]]], max_length: int) -> None:
    global _MAX_LENGTH
    _CONTEXTS[:] = [build_context(abstract, syntaxes) for abstract, syntaxes in contexts]
    _MAX_LENGTH = max_length


def _negotiate_in_worker(body: bytes) -> Negotiated:
    return negotiate(body, _CONTEXTS, _MAX_LENGTH)


def _ready() -> bool:
    return True


class Negotiator:
    """Negotiates association requests for the listener: small ones in a thread, large ones in a process.

    A request of a few contexts decodes in about a millisecond, so it is negotiated in one thread of
    the listener.  Larger ones (:data:`INLINE_LIMIT`) go to one worker process, started on the first
    of them (until it is ready, they too are negotiated in the thread).

    Parameters
    ----------
    contexts : sequence of PresentationContext
        What we accept.
    max_length : int
        Our Maximum Length Received.
    """

    #: Requests up to this many bytes are negotiated in the listener's thread (~3 ms of decoding).
    INLINE_LIMIT = 8 * 1024

    def __init__(self, contexts: Sequence[PresentationContext], max_length: int) -> None:
        self.contexts = list(contexts)
        self.max_length = max_length
        self._initargs = (
            [(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax]) for cx in contexts],
            max_length,
        )
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="acse-negotiate")
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    def submit(self, body: bytes) -> Future[Negotiated]:
        """Negotiate ``body``: in the thread when small (or the process is not ready yet), else in the process."""
        if len(body) > self.INLINE_LIMIT:
            pool = self._process()
            if pool is not None:
                try:
                    return pool.submit(_negotiate_in_worker, body)
                except BrokenProcessPool:
                    self.restart()
        return self._thread.submit(negotiate, body, self.contexts, self.max_length)

    def _process(self) -> ProcessPoolExecutor | None:
        """The worker process when it is ready; starts it (in the background) on first use."""
        with self._lock:
            if self._pool is None:
                # spawn: the listener has threads, which a forked child must not inherit half-way
                self._pool = ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"), initializer=_initialise, initargs=self._initargs
                )
                self._pool.submit(_ready).add_done_callback(lambda _: self._ready.set())
            return self._pool if self._ready.is_set() else None

    def restart(self) -> None:
        """Replace a worker process that died."""
        log.error("the association negotiation process died; starting a new one")
        with self._lock:
            pool, self._pool = self._pool, None
            self._ready.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the thread and the worker process."""
        self._thread.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
