"""The micro-batcher on the real transformers backend of the tiny LLaVA smoke model.

The batcher wraps a :class:`RecordingBackend`: a thin pass-through around the real
:class:`~models.transformers_backend.TransformersBackend` that records the size of every ``generate`` call
(the only way to count calls; the model, the padding and the decoding are all real).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from models.backend import GenerationRequest, GenerationResult, ModelIdentity
from models.batching import BatchedResult, BatcherClosed, BatchingBackend, BatchTimeout
from models.registry import FAMILIES
from models.transformers_backend import TransformersBackend
from tests.models.samples import radiograph
from tests.support.peers import wait_until

Backends = Callable[[str], TransformersBackend]


class RecordingBackend:
    """The real backend, recording how many requests each ``generate`` call carried."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend = backend
        self.sizes: list[int] = []

    @property
    def identity(self) -> ModelIdentity:
        return self.backend.identity

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.sizes.append(len(requests))
        return self.backend.generate(requests)


def study(number: int, images: int = 1) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"study-{number}",
        prompt=f"Describe the findings of study {number}.",
        images=tuple(radiograph(64 + 8 * number, 64, shade=30 * number + i) for i in range(images)),
        system_prompt="You are a radiology assistant.",
        max_new_tokens=8,
    )


def concurrently(batcher: BatchingBackend, requests: list[GenerationRequest]) -> dict[str, object]:
    """Each request from its own thread; returns each caller's result list or the exception it got."""
    outcomes: dict[str, object] = {}

    def call(request: GenerationRequest) -> None:
        try:
            outcomes[request.request_id] = batcher.generate([request])
        except Exception as exc:
            outcomes[request.request_id] = exc

    threads = [threading.Thread(target=call, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


@pytest.fixture
def recording(smoke_backend: Backends) -> RecordingBackend:
    return RecordingBackend(smoke_backend("llava"))


def test_concurrent_studies_share_one_generate_call_and_get_their_own_answers(recording: RecordingBackend) -> None:
    requests = [study(number) for number in range(4)]
    alone = {r.request_id: recording.backend.generate([r])[0] for r in requests}
    batcher = BatchingBackend(recording, batch_size=4, wait_seconds=60)  # only a full batch flushes early

    outcomes = concurrently(batcher, requests)
    batcher.close()

    assert recording.sizes == [4]
    assert (batcher.batches, batcher.requests) == (1, 4)
    for request in requests:
        [result] = outcomes[request.request_id]  # type: ignore[misc]
        assert isinstance(result, BatchedResult) and result.batch_size == 4
        assert result.request_id == request.request_id
        expected = alone[request.request_id]
        assert (result.text, result.tokens_in, result.tokens_out) == (
            expected.text,
            expected.tokens_in,
            expected.tokens_out,
        )
    assert len({alone[r.request_id].tokens_in for r in requests}) > 1  # the callers' answers differ


def test_the_wait_window_flushes_a_partial_batch(recording: RecordingBackend) -> None:
    batcher = BatchingBackend(recording, batch_size=8, wait_seconds=0.05)

    results = batcher.generate([study(1), study(2)])
    batcher.close()

    assert recording.sizes == [2]
    assert [r.request_id for r in results] == ["study-1", "study-2"]


def test_an_error_of_a_batch_reaches_every_caller_in_it(recording: RecordingBackend) -> None:
    too_many = FAMILIES["llava"].max_images + 1
    requests = [study(1), study(2, images=too_many), study(3)]
    batcher = BatchingBackend(recording, batch_size=3, wait_seconds=60)

    outcomes = concurrently(batcher, requests)

    assert recording.sizes == [3]
    for request in requests:
        error = outcomes[request.request_id]
        assert isinstance(error, ValueError) and "study-2" in str(error) and "at most" in str(error)
    # The model thread lives on: the next batch runs (a full one, so it does not wait out the 60 s window).
    after = concurrently(batcher, [study(4), study(5), study(6)])
    assert recording.sizes == [3, 3]
    assert {request_id: [r.request_id for r in results] for request_id, results in after.items()} == {  # type: ignore[attr-defined]
        f"study-{n}": [f"study-{n}"] for n in (4, 5, 6)
    }
    batcher.close()


def test_an_image_limit_splits_batches_and_a_large_request_still_runs_alone(recording: RecordingBackend) -> None:
    batcher = BatchingBackend(recording, batch_size=4, wait_seconds=0.05, max_images=2)

    results = batcher.generate([study(1), study(2), study(3, images=3)])
    batcher.close()

    assert recording.sizes == [2, 1]
    assert [r.request_id for r in results] == ["study-1", "study-2", "study-3"]
    assert [r.batch_size for r in results] == [2, 2, 1]  # type: ignore[attr-defined]


def test_close_drains_queued_requests_and_refuses_new_ones(recording: RecordingBackend) -> None:
    batcher = BatchingBackend(recording, batch_size=4, wait_seconds=600)
    outcomes: dict[str, object] = {}
    threads = [
        threading.Thread(target=lambda r=r: outcomes.__setitem__(r.request_id, batcher.generate([r])))
        for r in (study(1), study(2))
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: batcher.pending == 2, timeout=60, message="both requests queued")

    batcher.close()  # does not wait out the 600 s window
    for thread in threads:
        thread.join(timeout=60)

    assert recording.sizes == [2]
    assert sorted(outcomes) == ["study-1", "study-2"]
    with pytest.raises(BatcherClosed, match="closed"):
        batcher.generate([study(3)])


def test_a_caller_gives_up_after_the_timeout(recording: RecordingBackend) -> None:
    batcher = BatchingBackend(recording, batch_size=4, wait_seconds=600, timeout=0.01)

    with pytest.raises(BatchTimeout, match="no result"):
        batcher.generate([study(1)])
    batcher.close()  # the queued request still runs
    assert recording.sizes == [1]


@pytest.mark.parametrize(
    ("option", "value"), [("batch_size", 0), ("batch_size", 65), ("wait_seconds", -1.0), ("max_images", 0)]
)
def test_invalid_limits_are_refused(recording: RecordingBackend, option: str, value: float) -> None:
    options: dict[str, float] = {"batch_size": 2, "wait_seconds": 0.1, option: value}
    with pytest.raises(ValueError, match=option):
        BatchingBackend(recording, **options)  # type: ignore[arg-type]


def test_nothing_to_do_returns_at_once_and_the_identity_is_the_models(recording: RecordingBackend) -> None:
    batcher = BatchingBackend(recording, batch_size=2, wait_seconds=0.1)
    assert batcher.generate([]) == []
    assert batcher.identity == recording.backend.identity
    assert recording.sizes == []
    batcher.close()
