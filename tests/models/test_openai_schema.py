"""Schema-bound output and token log-probabilities from model servers (``response_format``, ``logprobs``).

vLLM and SGLang, the servers that bind decoding to a JSON schema, need a GPU and cannot run here, so most
tests talk to a scripted OpenAI-compatible server: a real HTTP server on a free port
(tests/support/http_peers.py) that records every JSON body it receives and answers the way such servers
do (a current one takes the schema and sends log-probabilities; an older one refuses ``response_format``
with a 400; another refuses ``logprobs``; ``transformers serve`` takes both and ignores them).  The backend
and its HTTP client are real.  The last test runs the real ``transformers serve`` on the tiny LLaVA and
records which path it takes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from integration.config import Settings
from models.backend import Decoding, GenerationRequest, TokenLogprob
from models.draft import parse_draft
from models.draft_schema import DRAFT_SCHEMA
from models.openai_backend import ModelServerRefused, OpenAICompatibleBackend
from models.openai_wire import SCHEMA_NAME, response_format
from tests.support.http_peers import Answer, Recorder, Request
from tests.support.model_server import RecordingProxy, TransformersServe
from worker.backends import served_backend_options

PROMPT = "Image 1: chest radiograph, PA view\nDescribe the findings."
#: What a schema-bound server answers: the draft's JSON.
BOUND_ANSWER = json.dumps(
    {
        "findings": [
            {
                "text": "Small left pleural effusion.",
                "images": [1],
                "laterality": "left",
                "body_region": "chest",
                "certainty": [],
                "urgency": "routine",
            }
        ],
        "impression": "Small left pleural effusion.",
        "limitations": "",
        "comparison": "",
    }
)
#: What a server that decodes freely answers.
FREE_ANSWER = "Findings: Small left pleural effusion [image 1].\nImpression: Small left pleural effusion."


def tokens_of(text: str) -> list[dict[str, Any]]:
    """The text in 5-character tokens with made-up log-probabilities, as ``logprobs.content`` carries them."""
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    return [
        {"token": p, "logprob": -0.05 * (k % 4), "bytes": list(p.encode()), "top_logprobs": []}
        for k, p in enumerate(pieces)
    ]


def completion(text: str, *, logprobs: list[dict[str, Any]] | None, finish: str = "stop") -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    choice["logprobs"] = {"content": logprobs} if logprobs is not None else None
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "scripted-vlm",
        "choices": [choice],
        "usage": {"prompt_tokens": 90, "completion_tokens": len(logprobs or ()) or 7, "total_tokens": 97},
    }


def error(status: int, message: str) -> Answer:
    # vLLM's error shape: {"object": "error", "message": ..., "type": "BadRequestError", "code": 400}
    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status}
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


#: What an older vLLM said to a json_schema response_format (pydantic's literal error).
OLD_VLLM_REFUSAL = (
    "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}]"
)


@dataclass
class ScriptedServer:
    """The chat completions endpoint of an OpenAI-compatible server, scripted per test; records every body."""

    refuse_schema: int = 0  # status with which response_format is refused (0: taken)
    refuse_logprobs: bool = False
    ignore_schema: bool = False  # takes response_format and answers free text anyway
    refuse_everything: str = ""  # a 400 for a reason of its own, to every request
    finish: str = "stop"
    answer_text: str | None = None  # None: the JSON when the schema was taken, else free text
    logprobs_entries: list[dict[str, Any]] | None = None  # None: the answer's own tokens
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: Request) -> Answer:
        assert request.method == "POST" and request.path == "/v1/chat/completions", request.path
        body = json.loads(request.body)
        with self.lock:
            self.bodies.append(body)
        if self.refuse_everything:
            return error(400, self.refuse_everything)
        if self.refuse_logprobs and "logprobs" in body:
            return error(400, "logprobs is not supported by this server")
        if self.refuse_schema and "response_format" in body:
            return error(self.refuse_schema, OLD_VLLM_REFUSAL)
        bound = "response_format" in body and not self.ignore_schema
        text = self.answer_text if self.answer_text is not None else (BOUND_ANSWER if bound else FREE_ANSWER)
        entries = self.logprobs_entries if self.logprobs_entries is not None else tokens_of(text)
        document = completion(text, logprobs=entries if body.get("logprobs") else None, finish=self.finish)
        return 200, {"Content-Type": "application/json"}, json.dumps(document).encode()


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedServer, str]]:
    script = ScriptedServer()
    with Recorder(script.answer) as peer:
        yield script, peer.url


def backend_for(url: str, **options: Any) -> OpenAICompatibleBackend:
    defaults: dict[str, Any] = {"model": "scripted-vlm", "max_new_tokens": 400, "backoff": 0.01, "attempts": 2}
    return OpenAICompatibleBackend(url, **{**defaults, **options})


def request(index: int = 1, *, schema: bool = True) -> GenerationRequest:
    pixels = np.random.default_rng(index).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return GenerationRequest(
        request_id=f"r{index}",
        prompt=PROMPT,
        images=(Image.fromarray(pixels),),
        system_prompt="You are a radiology assistant.",
        max_new_tokens=300,
        response_schema=DRAFT_SCHEMA if schema else None,
    )


def joined(tokens: tuple[TokenLogprob, ...]) -> str:
    return "".join(token.text for token in tokens)


def test_a_server_that_takes_the_schema_binds_decoding_and_sends_logprobs(
    scripted: tuple[ScriptedServer, str],
) -> None:
    script, url = scripted
    backend = backend_for(url)
    first, second = backend.generate([request(1), request(2)])
    for result in (first, second):
        assert result.decoding is Decoding.SERVER_SCHEMA and result.text == BOUND_ANSWER
        assert joined(result.token_logprobs) == BOUND_ANSWER  # the tokens join to the answer
        assert result.tokens_out == len(result.token_logprobs)
    assert [t.logprob for t in first.token_logprobs[:4]] == pytest.approx([0.0, -0.05, -0.1, -0.15])
    for body in script.bodies:
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": DRAFT_SCHEMA, "strict": True},
        }
        assert body["logprobs"] is True and body["temperature"] == 0 and body["max_tokens"] == 300
        assert body["messages"][0] == {"role": "system", "content": "You are a radiology assistant."}
    assert backend.schema_supported and backend.logprobs_supported
    parsed = parse_draft(first.text, 1)
    assert parsed.structured and [f.text for f in parsed.findings] == ["Small left pleural effusion."]


@pytest.mark.parametrize("status", [400, 422])
def test_a_server_that_refuses_the_schema_is_remembered_and_answers_freely(
    scripted: tuple[ScriptedServer, str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    script, url = scripted
    script.refuse_schema = status
    caplog.set_level(logging.INFO, logger="models.openai_backend")
    backend = backend_for(url)
    [first] = backend.generate([request(1)])
    assert first.decoding is Decoding.FREE_FALLBACK and first.text == FREE_ANSWER
    assert joined(first.token_logprobs) == FREE_ANSWER
    assert ["response_format" in body for body in script.bodies] == [True, False]  # tried, then without
    assert all(body["logprobs"] is True for body in script.bodies)
    assert not backend.schema_supported and backend.logprobs_supported
    [second] = backend.generate([request(2)])  # remembered: no second try with the schema
    assert second.decoding is Decoding.FREE_FALLBACK
    assert len(script.bodies) == 3 and "response_format" not in script.bodies[2]
    assert caplog.text.count("does not support response_format") == 1  # logged once
    assert f"refused it: HTTP {status}" in caplog.text
    assert "radiograph" not in caplog.text and "literal_error" not in caplog.text  # no request, no server text
    parsed = parse_draft(second.text, 1)  # the lenient parser reads the free answer
    assert parsed.structured and parsed.findings[0].text.startswith("Small left pleural effusion")


def test_a_batch_against_a_server_that_refuses_the_schema_falls_back_together(
    scripted: tuple[ScriptedServer, str],
) -> None:
    script, url = scripted
    script.refuse_schema = 400
    backend = backend_for(url, concurrency=3)
    results = backend.generate([request(k) for k in range(3)])
    assert [r.decoding for r in results] == [Decoding.FREE_FALLBACK] * 3
    tried = sum("response_format" in body for body in script.bodies)
    assert 1 <= tried <= 3 and len(script.bodies) == 3 + tried  # each refused try was sent once more
    before = len(script.bodies)
    backend.generate([request(5)])
    assert len(script.bodies) == before + 1 and "response_format" not in script.bodies[-1]


def test_a_server_that_refuses_logprobs_is_asked_without_them(scripted: tuple[ScriptedServer, str]) -> None:
    script, url = scripted
    script.refuse_logprobs = True
    backend = backend_for(url)
    [first] = backend.generate([request(1)])
    assert first.decoding is Decoding.SERVER_SCHEMA and first.token_logprobs == ()
    assert ["logprobs" in body for body in script.bodies] == [True, False]
    assert all("response_format" in body for body in script.bodies)  # the schema was never in question
    assert not backend.logprobs_supported and backend.schema_supported
    backend.generate([request(2)])
    assert len(script.bodies) == 3 and "logprobs" not in script.bodies[2]


def test_a_server_that_refuses_both_fields_loses_them_one_at_a_time(scripted: tuple[ScriptedServer, str]) -> None:
    script, url = scripted
    script.refuse_logprobs, script.refuse_schema = True, 400
    backend = backend_for(url)
    [first] = backend.generate([request(1)])
    assert first.decoding is Decoding.FREE_FALLBACK and first.text == FREE_ANSWER and first.token_logprobs == ()
    sent = [("response_format" in body, "logprobs" in body) for body in script.bodies]
    assert sent == [(True, True), (True, False), (False, False)]
    backend.generate([request(2)])
    assert ("response_format" in script.bodies[-1], "logprobs" in script.bodies[-1]) == (False, False)
    assert len(script.bodies) == 4


def test_a_400_for_another_reason_is_raised_and_the_schema_kept(scripted: tuple[ScriptedServer, str]) -> None:
    script, url = scripted
    script.refuse_everything = "This model's maximum context length is 4096 tokens"
    backend = backend_for(url)
    with pytest.raises(ModelServerRefused, match=r"HTTP 400: This model's maximum context length") as caught:
        backend.generate([request(1)])
    assert "PACSVLM_MODEL_SERVER_SCHEMA" not in str(caught.value)
    assert ["response_format" in body for body in script.bodies] == [True, False]  # one try without it
    assert backend.schema_supported  # refused without it too: not the schema's fault
    script.refuse_everything = ""
    [result] = backend.generate([request(2)])
    assert result.decoding is Decoding.SERVER_SCHEMA and "response_format" in script.bodies[-1]


def test_in_json_schema_mode_a_refusal_fails_the_request(scripted: tuple[ScriptedServer, str]) -> None:
    script, url = scripted
    script.refuse_schema = 400
    backend = backend_for(url, schema_mode="json_schema")
    with pytest.raises(ModelServerRefused, match=r"HTTP 400: .*PACSVLM_MODEL_SERVER_SCHEMA=json_schema"):
        backend.generate([request(1)])
    assert len(script.bodies) == 1  # not sent again without the schema
    with pytest.raises(ModelServerRefused):
        backend.generate([request(2)])  # nor remembered: the setting asks for it every time
    assert len(script.bodies) == 2 and all("response_format" in body for body in script.bodies)


def test_a_server_that_ignores_the_schema_is_recorded_as_free(
    scripted: tuple[ScriptedServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    script, url = scripted
    script.ignore_schema = True  # as transformers serve does: 200, free text
    caplog.set_level(logging.WARNING, logger="models.openai_backend")
    backend = backend_for(url)
    [first] = backend.generate([request(1)])
    assert first.decoding is Decoding.FREE_FALLBACK and "took it and ignored it" in caplog.text
    assert not backend.schema_supported
    backend.generate([request(2)])
    assert ["response_format" in body for body in script.bodies] == [True, False]

    forced = backend_for(url, schema_mode="json_schema")  # sent every time; still recorded as free
    results = forced.generate([request(3), request(4)])
    assert [r.decoding for r in results] == [Decoding.FREE_FALLBACK] * 2
    assert all("response_format" in body for body in script.bodies[2:])
    assert "answered a request with response_format in free text" in caplog.text


def test_an_answer_cut_at_max_tokens_is_still_bound(scripted: tuple[ScriptedServer, str]) -> None:
    script, url = scripted
    script.answer_text, script.finish = BOUND_ANSWER[:40], "length"
    backend = backend_for(url)
    [result] = backend.generate([request(1)])
    assert result.decoding is Decoding.SERVER_SCHEMA and backend.schema_supported


def test_off_mode_and_requests_without_a_schema_decode_freely(scripted: tuple[ScriptedServer, str]) -> None:
    script, url = scripted
    [off] = backend_for(url, schema_mode="off").generate([request(1)])
    [plain] = backend_for(url).generate([request(2, schema=False)])
    assert off.decoding is Decoding.FREE and plain.decoding is Decoding.FREE
    assert off.text == FREE_ANSWER and joined(plain.token_logprobs) == FREE_ANSWER
    assert all("response_format" not in body and body["logprobs"] is True for body in script.bodies)
    with pytest.raises(ValueError, match="unknown schema mode 'grammar'"):
        backend_for(url, schema_mode="grammar")


@pytest.mark.parametrize(
    "entries",
    [
        [{"token": "Findings", "logprob": 0.5}],  # a probability above 1
        [{"token": "Findings", "logprob": "-0.1"}],  # not a number
        [{"token": "Findings", "logprob": True}],
        [{"logprob": -0.1}],  # no token text
        ["Findings"],
    ],
)
def test_unusable_logprobs_are_dropped_whole(scripted: tuple[ScriptedServer, str], entries: list[Any]) -> None:
    script, url = scripted
    script.logprobs_entries = [*tokens_of("Find"), *entries]
    [result] = backend_for(url).generate([request(1, schema=False)])
    assert result.text == FREE_ANSWER and result.token_logprobs == ()  # one left out would misplace the rest


def test_the_worker_passes_the_schema_setting() -> None:
    settings = Settings(model_server_url="http://vllm:8000/v1", model_server_schema="json_schema")
    options = served_backend_options(settings)
    assert options["schema_mode"] == "json_schema"
    assert OpenAICompatibleBackend(**options).schema_mode == "json_schema"
    assert served_backend_options(Settings(model_server_url="http://vllm:8000"))["schema_mode"] == "auto"


def test_transformers_serve_takes_the_fields_and_the_path_is_recorded(
    smoke_model_dir: Path, smoke_model_server: TransformersServe
) -> None:
    """The real ``transformers serve`` (tiny LLaVA, CPU): which path it takes, and that the result says so."""
    from transformers.cli.serving.chat_completion import UNUSED_CHAT_COMPLETION_FIELDS

    proxy = RecordingProxy(smoke_model_server.url)
    try:
        backend = OpenAICompatibleBackend(proxy.url, model=str(smoke_model_dir), family="llava", max_new_tokens=12)
        [first] = backend.generate([request(1)])
        [second] = backend.generate([request(2)])
    finally:
        proxy.close()
    sent = proxy.chat_requests()
    assert all(record.status == 200 for record in sent)  # neither field is refused
    assert sent[0].json()["response_format"] == response_format(DRAFT_SCHEMA) and sent[0].json()["logprobs"] is True
    if "response_format" in UNUSED_CHAT_COMPLETION_FIELDS:  # transformers 5.x: taken, ignored with a warning
        assert first.decoding is Decoding.FREE_FALLBACK and not backend.schema_supported
    if first.decoding is Decoding.FREE_FALLBACK:  # ignored: remembered, the second goes without the schema
        assert second.decoding is Decoding.FREE_FALLBACK and "response_format" not in sent[1].json()
    else:
        assert first.decoding is Decoding.SERVER_SCHEMA and first.text.startswith("{")
    if "logprobs" in UNUSED_CHAT_COMPLETION_FIELDS:
        assert first.token_logprobs == () == second.token_logprobs
    for result in (first, second):
        if result.token_logprobs:
            assert joined(result.token_logprobs).strip() == result.text
        parsed = parse_draft(result.text, 1)  # never raises; free text is kept as a flagged finding
        assert not result.text or parsed.findings or parsed.structured
    assert sent[1].json()["logprobs"] is True  # ignored, not refused: still asked for
