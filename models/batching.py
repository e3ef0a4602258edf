"""Micro-batching of generation requests from concurrent callers into one model thread.

A GPU worker that drafts one study at a time leaves most of the GPU idle: decoding one sequence reads
every weight once per token, and decoding eight reads them once too.  A worker that holds several
studies at once (Celery's threads pool, one thread per held message) wraps its backend in a
:class:`BatchingBackend`: each thread's :meth:`BatchingBackend.generate` puts its requests on a queue
and waits; one model thread takes the queue's head, waits up to ``wait_seconds`` for more requests
(or until ``batch_size`` are there), runs one ``generate`` of the wrapped backend on the batch, and
hands each caller its own result.  An error of a batch goes to every caller in it.  A request that
alone exceeds ``max_images`` still runs (alone).  :meth:`BatchingBackend.close` refuses new requests
and drains the queue before it returns.

Plain Python (no torch): the wrapped backend owns the model; this module owns the single thread that
calls it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from models.backend import GenerationRequest, GenerationResult, ModelIdentity, VisionLanguageBackend

log = logging.getLogger(__name__)

#: Largest batch a worker may ask for (beyond this the KV cache of 7B models outgrows one GPU).
MAX_BATCH_SIZE = 64


class BatcherClosed(RuntimeError):
    """The batcher was closed: it takes no new requests."""


class BatchTimeout(TimeoutError):
    """A caller waited longer than the batcher's timeout for its result."""


@dataclass(frozen=True)
class BatchedResult(GenerationResult):
    """A :class:`~models.backend.GenerationResult` that also says how many requests shared its batch.

    Attributes
    ----------
    batch_size : int
        Requests in the ``generate`` call this result came from (1: it ran alone).
    """

    batch_size: int = 1


@dataclass
class _Pending:
    request: GenerationRequest
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None
    error: BaseException | None = None


class BatchingBackend:
    """A backend that gathers requests of concurrent callers into batches for one model thread.

    Parameters
    ----------
    backend : VisionLanguageBackend
        The backend that runs the batches (for example a loaded
        :class:`~models.transformers_backend.TransformersBackend`); only the model thread calls it.
    batch_size : int
        Most requests per batch (1 to :data:`MAX_BATCH_SIZE`).
    wait_seconds : float
        How long the model thread waits, from the arrival of a batch's first request, for the batch to fill.
    max_images : int, optional
        Most images per batch (GPU memory); a request with more images than this runs alone.
    timeout : float, optional
        Seconds a caller waits for its results before :class:`BatchTimeout` (None: no limit).

    Raises
    ------
    ValueError
        When a limit is out of range.
    """

    def __init__(
        self,
        backend: VisionLanguageBackend,
        *,
        batch_size: int,
        wait_seconds: float,
        max_images: int | None = None,
        timeout: float | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE}, got {batch_size}")
        if wait_seconds < 0:
            raise ValueError(f"wait_seconds must not be negative, got {wait_seconds}")
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.backend = backend
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.max_images = max_images
        self.timeout = timeout
        self._queue: deque[_Pending] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0
        self.requests = 0

    @property
    def identity(self) -> ModelIdentity:
        """The wrapped backend's identity."""
        return self.backend.identity

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken into a batch."""
        with self._changed:
            return len(self._queue)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Queue this caller's requests for the model thread and wait: one :class:`BatchedResult` per request, in order.

        The requests may run in different batches.

        Raises
        ------
        BatcherClosed
            When the batcher was closed.
        BatchTimeout
            When the results took longer than ``timeout``.
        Exception
            Whatever the wrapped backend raised for a batch holding one of these requests.
        """
        if not requests:
            return []
        pending = [_Pending(request) for request in requests]
        with self._changed:
            if self._closed:
                raise BatcherClosed("the model batcher is closed (the worker is shutting down)")
            self._queue.extend(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="model-batcher", daemon=True)
                self._thread.start()
            self._changed.notify_all()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        results: list[GenerationResult] = []
        for item in pending:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not item.done.wait(remaining):
                raise BatchTimeout(f"no result from the model within {self.timeout:.0f} s")
            if item.error is not None:
                raise item.error
            assert item.result is not None
            results.append(item.result)
        return results

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, run every queued one, and stop the model thread.

        ``timeout`` is the seconds to wait for the queue to drain (None: until it has).
        """
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _full(self) -> bool:
        """Whether the queue holds a full batch (by count, or by images when a limit is set)."""
        if len(self._queue) >= self.batch_size:
            return True
        if self.max_images is None:
            return False
        return sum(len(item.request.images) for item in self._queue) >= self.max_images

    def _take(self) -> list[_Pending]:
        """Pop the next batch off the queue: its head always, then more while the limits allow."""
        batch = [self._queue.popleft()]
        images = len(batch[0].request.images)
        while self._queue and len(batch) < self.batch_size:
            more = len(self._queue[0].request.images)
            if self.max_images is not None and images + more > self.max_images:
                break
            batch.append(self._queue.popleft())
            images += more
        return batch

    def _serve(self) -> None:
        """The model thread: gather a batch, run it, repeat; after :meth:`close`, drain and return."""
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return
                flush_at = self._queue[0].arrived + self.wait_seconds
                while not self._closed and not self._full():
                    remaining = flush_at - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                batch = self._take()
            self._run(batch)

    def _run(self, batch: list[_Pending]) -> None:
        """Run one batch on the wrapped backend and hand out results (or the error) to its callers."""
        started = time.perf_counter()
        try:
            results = self.backend.generate([item.request for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the model answered {len(results)} of {len(batch)} requests")
            for item, result in zip(batch, results, strict=True):
                values = {f.name: getattr(result, f.name) for f in fields(GenerationResult)}
                item.result = BatchedResult(**values, batch_size=len(batch))
        except BaseException as exc:  # every caller of the batch gets the error, nobody waits forever
            for item in batch:
                item.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self.batches += 1
            self.requests += len(batch)
            for item in batch:
                if item.result is None and item.error is None:
                    item.error = RuntimeError("the model batch ended without a result")
                item.done.set()
        log.info(
            "model batch %d: %d request(s), %d image(s), %.2f s%s",
            self.batches,
            len(batch),
            sum(len(item.request.images) for item in batch),
            time.perf_counter() - started,
            "" if batch[0].error is None else f", failed: {type(batch[0].error).__name__}",
        )
