"""The OpenAI-compatible backend against a real server: ``transformers serve`` running the tiny LLaVA on the CPU.

A recording proxy (tests/support/model_server.py) sits between backend and server: it forwards requests unchanged,
keeps what it forwarded, and can answer with errors or hold answers back.  Nothing is mocked.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import pickle
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from models.backend import GenerationRequest, ModelNotStaged
from models.openai_backend import (
    GENERIC_FAMILY,
    ModelServerRefused,
    ModelServerTimeout,
    ModelServerUnavailable,
    OpenAICompatibleBackend,
    family_for_served_name,
    png_data_url,
    server_base,
    server_display,
)
from tests.support.model_server import RecordingProxy, TransformersServe
from tests.support.peers import wait_until


@pytest.fixture
def server(smoke_model_server: TransformersServe) -> TransformersServe:
    """The session's ``transformers serve`` (tests/conftest.py)."""
    return smoke_model_server


@pytest.fixture
def proxy(server: TransformersServe) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(server.url)
    yield recording
    recording.close()


def backend_for(url: str, model_dir: Path, **options: object) -> OpenAICompatibleBackend:
    defaults: dict[str, object] = {"family": "llava", "max_new_tokens": 6, "backoff": 0.05, "backoff_max": 0.2}
    return OpenAICompatibleBackend(url, model=str(model_dir), **{**defaults, **options})  # type: ignore[arg-type]


def image(seed: int, side: int = 48) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def request(index: int, images: int = 2) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r{index}",
        prompt=f"Image 1: CT series 2, slice {index}/9, lung window\nDescribe the findings.",
        images=tuple(image(index * 10 + k) for k in range(images)),
        system_prompt="You are a radiology assistant.",
        max_new_tokens=5,
    )


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return chunks


def data_url_bytes(url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return base64.b64decode(url[len(prefix) :])


def test_a_batch_runs_concurrently_with_images_in_order(
    proxy: RecordingProxy, smoke_model_dir: Path, server: TransformersServe
) -> None:
    proxy.gather = threading.Barrier(2, timeout=60)  # each request waits until two are in flight together
    backend = backend_for(proxy.url, smoke_model_dir, concurrency=2, api_key="secret-key")
    requests = [request(index, images=1 + index % 2) for index in range(4)]
    results = backend.generate(requests)
    assert [r.request_id for r in results] == ["r0", "r1", "r2", "r3"]
    assert all(r.tokens_in > 0 and 1 <= r.tokens_out <= 5 for r in results)
    assert proxy.most_in_flight == 2  # concurrent, and never more than the limit
    sent = proxy.chat_requests()
    assert len(sent) == 4 and all(r.status == 200 for r in sent)
    by_prompt = {r.json()["messages"][-1]["content"][-1]["text"]: r for r in sent}
    for original in requests:
        record = by_prompt[f"You are a radiology assistant.\n\n{original.prompt}"]  # llava: no system role
        assert record.headers["Authorization"] == "Bearer secret-key"
        body = record.json()
        assert body["model"] == str(smoke_model_dir) and body["temperature"] == 0 and body["max_tokens"] == 5
        [user] = body["messages"]
        parts = user["content"]
        assert [p["type"] for p in parts] == ["image_url"] * len(original.images) + ["text"]
        for part, picture in zip(parts, original.images, strict=False):
            sent_image = Image.open(io.BytesIO(data_url_bytes(part["image_url"]["url"])))
            assert np.array_equal(np.asarray(sent_image), np.asarray(picture))  # lossless, in order
    identity = backend.identity
    assert identity.model_id == str(smoke_model_dir)
    assert identity.revision == f"server:127.0.0.1:{proxy.url.rsplit(':', 1)[1]}" and identity.family == "llava"
    again = backend_for(server.url, smoke_model_dir).generate([requests[1]])
    assert again[0].text == results[1].text  # greedy: the same request gives the same answer


def test_a_family_with_a_system_role_gets_a_system_message(proxy: RecordingProxy, smoke_model_dir: Path) -> None:
    backend = backend_for(proxy.url, smoke_model_dir, family=GENERIC_FAMILY)
    backend.generate([request(1)])
    [sent] = proxy.chat_requests()
    system, user = sent.json()["messages"]
    assert system == {"role": "system", "content": "You are a radiology assistant."}
    assert user["content"][-1]["text"] == request(1).prompt


def test_the_preamble_is_sent_before_the_images_and_the_prompt_after(
    proxy: RecordingProxy, smoke_model_dir: Path
) -> None:
    preamble = 'Chest CT.\nPrior study (412 days earlier): CT. Its report: "Nodule six millimetres."'
    with_prior = dataclasses.replace(request(4), preamble=preamble)
    (result,) = backend_for(proxy.url, smoke_model_dir).generate([with_prior])  # the real server renders it
    assert result.tokens_out >= 1
    backend_for(proxy.url, smoke_model_dir, family=GENERIC_FAMILY).generate([with_prior])
    backend_for(proxy.url, smoke_model_dir).generate([request(4)])
    llava, generic, plain = (sent.json()["messages"] for sent in proxy.chat_requests())
    assert all(sent.status == 200 for sent in proxy.chat_requests())
    [user] = llava  # llava: no system role, the system prompt opens the preamble
    assert [part["type"] for part in user["content"]] == ["text", "image_url", "image_url", "text"]
    assert user["content"][0]["text"] == f"You are a radiology assistant.\n\n{preamble}\n"
    assert user["content"][-1]["text"] == request(4).prompt
    system, user = generic
    assert system["content"] == "You are a radiology assistant." and user["content"][0]["text"] == f"{preamble}\n"
    [user] = plain  # no preamble: as before
    assert [part["type"] for part in user["content"]] == ["image_url", "image_url", "text"]
    proxy.fail_next(1, 422, message="cannot read: Prior study (412 days earlier): CT. Its report")
    with pytest.raises(ModelServerRefused, match="withheld"):
        backend_for(proxy.url, smoke_model_dir).generate([with_prior])


def test_503_answers_are_retried(
    proxy: RecordingProxy, smoke_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="models.openai_backend")
    proxy.fail_next(2, 503)
    [result] = backend_for(proxy.url, smoke_model_dir, attempts=4).generate([request(2)])
    assert result.tokens_out >= 1
    assert [r.status for r in proxy.chat_requests()] == [503, 503, 200]
    assert caplog.text.count("HTTP 503") == 2

    proxy.fail_next(3, 503)
    with pytest.raises(ModelServerUnavailable, match="unavailable after 3 attempts: HTTP 503: busy"):
        backend_for(proxy.url, smoke_model_dir, attempts=3).generate([request(2)])


def test_a_4xx_is_a_permanent_error_with_the_servers_message(proxy: RecordingProxy, smoke_model_dir: Path) -> None:
    backend = OpenAICompatibleBackend(proxy.url, model="some-other-model", attempts=4, backoff=0.05)
    with pytest.raises(ModelServerRefused, match=r"HTTP 400: .*pinned") as caught:
        backend.generate([request(3)])
    assert len(proxy.chat_requests()) == 1  # not retried
    assert isinstance(caught.value, ModelNotStaged)  # the task fails the job at once
    assert "Weights are never downloaded" not in str(caught.value)
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)

    proxy.fail_next(1, 422, message="bad request for: " + request(3).prompt)  # a server quoting what it got
    with pytest.raises(ModelServerRefused, match="withheld") as quoted:
        backend_for(proxy.url, smoke_model_dir).generate([request(3)])
    assert "Describe the findings" not in str(quoted.value)


def test_without_a_model_name_the_backend_takes_the_one_model_a_pinned_server_lists(
    proxy: RecordingProxy, smoke_model_dir: Path
) -> None:
    # transformers serve >= 5.25 lists the model it is pinned to (with a non-OpenAI "status": loaded/unloaded).
    backend = OpenAICompatibleBackend(proxy.url + "/v1/", model=None, max_new_tokens=4)
    assert backend.identity.model_id == str(smoke_model_dir)
    assert backend.identity.revision == f"server:{backend.location}"
    assert [r.path for r in proxy.requests] == ["/v1/models"]
    [result] = backend.generate([request(5)])
    assert result.text
    [chat] = proxy.chat_requests()
    assert chat.json()["model"] == str(smoke_model_dir)


def test_without_a_model_name_a_server_listing_several_must_be_told_which(
    smoke_model_dir: Path, tmp_path: Path
) -> None:
    # An unpinned server lists every generative model of its hub cache: two here, so no guess is made.
    hub_models = {"pacs/chest-a": smoke_model_dir, "pacs/chest-b": smoke_model_dir}
    serve = TransformersServe(None, tmp_path, hub_models=hub_models).start()
    try:
        backend = OpenAICompatibleBackend(serve.url, model=None)
        listed = r"\((pacs/chest-a, pacs/chest-b|pacs/chest-b, pacs/chest-a)\)"
        with pytest.raises(ModelServerRefused, match=rf"serves 2 models {listed}: set PACSVLM_MODEL_SERVER_MODEL"):
            _ = backend.identity
    finally:
        serve.stop()


def test_a_server_that_does_not_answer_times_out_with_a_clear_error(
    proxy: RecordingProxy, smoke_model_dir: Path
) -> None:
    proxy.hold.set()
    backend = backend_for(proxy.url, smoke_model_dir, timeout=1.0, attempts=3)
    with pytest.raises(ModelServerTimeout, match=r"no answer within 1 s \(PACSVLM_MODEL_SERVER_TIMEOUT\)"):
        backend.generate([request(4)])
    assert len(proxy.chat_requests()) == 1  # a timed-out generation is not tried again at once
    proxy.released.set()


def test_a_restarted_server_is_reached_again(
    server: TransformersServe, smoke_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="models.openai_backend")
    backend = backend_for(server.url, smoke_model_dir, attempts=200, backoff=0.2, backoff_max=1.0)
    [before] = backend.generate([request(5)])
    server.stop()
    outcome: dict[str, object] = {}

    def generate() -> None:
        try:
            outcome["result"] = backend.generate([request(5)])
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    wait_until(lambda: "cannot connect" in caplog.text, timeout=60, message="a refused connection retried")
    server.start()
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    [after] = outcome["result"]  # type: ignore[misc]
    assert after.text == before.text


def test_images_leave_as_pixels_only() -> None:
    picture = image(7)
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "Doe^Jane")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    loaded = Image.open(io.BytesIO(buffer.getvalue()))
    assert "PatientName" in loaded.info
    encoded = data_url_bytes(png_data_url(loaded))
    assert set(png_chunks(encoded)) == {b"IHDR", b"IDAT", b"IEND"}
    assert b"Doe" not in encoded
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded))), np.asarray(picture))
    grey = data_url_bytes(png_data_url(Image.new("I;16", (8, 8), 300)))
    assert Image.open(io.BytesIO(grey)).mode == "RGB"


def test_names_urls_and_settings() -> None:
    assert family_for_served_name("google/medgemma-4b-it") == "medgemma"
    assert family_for_served_name("FreedomIntelligence/HuatuoGPT-Vision-7B-Qwen2.5VL") == "qwen2.5-vl"
    assert family_for_served_name("FreedomIntelligence/HuatuoGPT-Vision-7B-hf") == "huatuogpt-vision"
    assert family_for_served_name("lingshu-medical-mllm/Lingshu-7B") == "qwen2.5-vl"
    assert family_for_served_name("llava-hf/llava-1.5-7b-hf") == "llava"
    assert family_for_served_name("pacs-vlm") == GENERIC_FAMILY
    assert server_base("http://vllm:8000/v1/") == "http://vllm:8000"
    assert server_display("https://user:pw@models.example.org/v1") == "https://models.example.org"
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleBackend("ftp://vllm:8000")
    with pytest.raises(ValueError, match="unknown family"):
        OpenAICompatibleBackend("http://vllm:8000", family="gpt")
    assert OpenAICompatibleBackend("http://vllm:8000", model="pacs-vlm").identity.family == GENERIC_FAMILY
