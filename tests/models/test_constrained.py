"""Schema-bound decoding on the real transformers path: tiny checkpoints, xgrammar, raw-logit log-probabilities.

A randomly initialised model never closes a JSON string on its own, so the end-to-end case uses a tiny
LLaVA *taught* (a few dozen optimiser steps on CPU, on the real weights, saved as a checkpoint) to answer
one prompt with a JSON draft that breaks the schema (a laterality outside its words, an extra key).  Free
decoding repeats the broken answer; decoding bound to the schema gives JSON the schema accepts.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import torch

from models.backend import Decoding, GenerationRequest
from models.confidence import finding_confidences
from models.constrained import SchemaLogitsProcessor, compile_schema
from models.draft import parse_draft
from models.draft_schema import DRAFT_SCHEMA
from models.token_logprobs import answer_logprobs, raw_logprobs, token_texts
from models.transformers_backend import TransformersBackend
from tests.models.samples import radiograph

#: What the taught model answers: JSON, but "left side" is no laterality and "note" no key of the schema.
TAUGHT_ANSWER = json.dumps(
    {
        "findings": [
            {
                "text": "Small left pleural effusion.",
                "images": [],
                "laterality": "left side",
                "body_region": "chest",
                "certainty": ["likely"],
                "urgency": "routine",
                "note": "x",
            }
        ],
        "impression": "Small effusion.",
        "limitations": "",
        "comparison": "no prior study",
    }
)
PROMPT = "Describe the findings."


def request(schema: bool, max_new_tokens: int = 200, request_id: str = "taught") -> GenerationRequest:
    return GenerationRequest(
        request_id, PROMPT, (), max_new_tokens=max_new_tokens, response_schema=DRAFT_SCHEMA if schema else None
    )


def teach(backend: TransformersBackend, answer: str, target: Path, steps: int = 60) -> Path:
    """Train the backend's loaded model on one prompt and answer, save it as a checkpoint in ``target``."""
    prompt = backend.render_prompt(request(schema=False))
    loaded = backend._loaded
    assert loaded is not None
    tokenizer, model = loaded.processor.tokenizer, loaded.model
    stop = tokenizer.convert_ids_to_tokens(min(loaded.stop_token_ids))
    adds_bos = not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))
    prompt_ids = tokenizer(prompt, add_special_tokens=adds_bos, return_tensors="pt")["input_ids"]
    ids = tokenizer(prompt + answer + stop, add_special_tokens=adds_bos, return_tensors="pt")["input_ids"]
    assert torch.equal(ids[0, : prompt_ids.shape[1]], prompt_ids[0])
    labels = ids.clone()
    labels[:, : prompt_ids.shape[1]] = -100  # learn the answer only
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains many times faster without thread hand-offs
    try:
        torch.manual_seed(0)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def taught(smoke_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersBackend]:
    directory = tmp_path_factory.mktemp("taught") / "llava"
    shutil.copytree(smoke_dir("llava"), directory)
    teach(TransformersBackend(directory, device="cpu"), TAUGHT_ANSWER, directory)
    yield TransformersBackend(directory, device="cpu")


def schema_errors(text: str) -> list[str]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"not JSON: {exc}"]
    return [error.message for error in jsonschema.Draft202012Validator(DRAFT_SCHEMA).iter_errors(document)]


def test_an_answer_bound_to_the_schema_is_json_the_schema_accepts(taught: TransformersBackend) -> None:
    free, bound = taught.generate([request(schema=False)])[0], taught.generate([request(schema=True)])[0]

    assert free.decoding is Decoding.FREE and schema_errors(free.text)  # the taught answer breaks the schema
    assert bound.decoding is Decoding.GRAMMAR
    assert schema_errors(bound.text) == [], bound.text
    draft = parse_draft(bound.text, n_images=0)
    assert draft.structured and len(draft.findings) >= 1
    finding = draft.findings[0]
    assert finding.laterality in ("left", "right", "bilateral", "midline", "none")
    assert finding.urgency in ("critical", "urgent", "routine", "none")
    assert bound.tokens_out <= 200 and bound.token_logprobs


def test_log_probabilities_join_to_the_answer_and_score_each_finding(taught: TransformersBackend) -> None:
    result = taught.generate([request(schema=True)])[0]

    assert "".join(token.text for token in result.token_logprobs).strip() == result.text
    assert len(result.token_logprobs) == result.tokens_out - 1  # the stop token has none
    assert all(token.logprob <= 0 for token in result.token_logprobs)
    scores = finding_confidences(result.text, result.token_logprobs, parse_draft(result.text, 0).findings)
    assert scores and all(score is not None and 0 < score <= 1 for score in scores)
    assert scores[0] is not None and scores[0] > 0.5  # taught wording: the model is sure of it


def test_a_mixed_batch_binds_only_the_rows_that_ask_and_logprobs_are_the_models_own(
    smoke_backend: Callable[[str], TransformersBackend],
) -> None:
    backend = smoke_backend("llava")  # random weights: noise, but every token of the bound row obeys the grammar
    rows = [
        GenerationRequest("bound", "Describe.", (radiograph(60, 40),), max_new_tokens=24, response_schema=DRAFT_SCHEMA),
        GenerationRequest("free", "Describe.", (radiograph(30, 50),), max_new_tokens=24),
    ]

    bound, free = backend.generate(rows)

    assert (bound.decoding, free.decoding) == (Decoding.GRAMMAR, Decoding.FREE)
    assert bound.text.startswith('{"findings": [') and not free.text.startswith('{"findings": [')
    for result in (bound, free):
        assert "".join(token.text for token in result.token_logprobs).strip() == result.text
        assert all(token.logprob <= 0 for token in result.token_logprobs)
    # The grammar forces '{': masked and renormalised it would be certain (log-probability 0); the model's own
    # probability of it, read from the raw logits, is that of a random model over a 768-token vocabulary.
    assert bound.token_logprobs[0].text == "{" and bound.token_logprobs[0].logprob < math.log(0.5)


def test_grammars_are_compiled_once_per_tokenizer_and_vocabulary(
    smoke_backend: Callable[[str], TransformersBackend],
) -> None:
    backend = smoke_backend("medgemma")
    backend.load()
    tokenizer = backend._loaded.processor.tokenizer  # type: ignore[union-attr]
    first = compile_schema(tokenizer, DRAFT_SCHEMA, vocab_size=768, stop_token_ids={1})
    assert compile_schema(tokenizer, DRAFT_SCHEMA, vocab_size=768, stop_token_ids=[1]) is first
    assert compile_schema(tokenizer, DRAFT_SCHEMA, vocab_size=800, stop_token_ids={1}) is not first
    with pytest.raises(ValueError, match="vocab_size"):
        compile_schema(tokenizer, DRAFT_SCHEMA, vocab_size=0)
    processor = SchemaLogitsProcessor([first, None])
    with pytest.raises(ValueError, match="rows"):
        processor(torch.zeros((3, 4), dtype=torch.long), torch.zeros((3, 768)))


@pytest.mark.parametrize("name", ["llava", "medgemma"])
def test_token_texts_join_to_the_decoded_text_across_split_characters(
    name: str, smoke_backend: Callable[[str], TransformersBackend]
) -> None:
    backend = smoke_backend(name)
    backend.load()
    tokenizer = backend._loaded.processor.tokenizer  # type: ignore[union-attr]
    text = 'Ödem 5 µm, "肺" nodule 🫁 {"a": [1]}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    pieces = token_texts(tokenizer, ids)

    assert pieces is not None and len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert "" in pieces  # the smoke vocabulary has no token for 肺 or 🫁: their bytes come in several tokens
    assert not any("\ufffd" in piece for piece in pieces)
    assert token_texts(tokenizer, []) == []


def test_answer_logprobs_say_nothing_rather_than_something_wrong(
    smoke_backend: Callable[[str], TransformersBackend],
) -> None:
    backend = smoke_backend("llava")
    backend.load()
    tokenizer = backend._loaded.processor.tokenizer  # type: ignore[union-attr]
    ids = tokenizer("no effusion", add_special_tokens=False)["input_ids"]
    told = answer_logprobs(tokenizer, ids, [-0.5] * len(ids))
    assert "".join(token.text for token in told) == "no effusion" and {t.logprob for t in told} == {-0.5}
    assert answer_logprobs(tokenizer, ids, [float("nan")] * len(ids)) == ()  # an overflowed model
    assert answer_logprobs(tokenizer, ids, [-0.5] * (len(ids) - 1)) == ()  # fewer values than tokens
    assert answer_logprobs(tokenizer, [], []) == ()
    logits = [torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[5.0, 5.0]])]
    [[first, second]] = raw_logprobs(logits, torch.tensor([[1, 0]]))
    assert first == pytest.approx(math.log(0.75)) and second == pytest.approx(math.log(0.5))


def test_the_mask_allows_only_what_the_schema_allows_never_padding_and_leaves_raw_logits_alone(
    smoke_backend: Callable[[str], TransformersBackend],
) -> None:
    backend = smoke_backend("llava")
    backend.load()
    tokenizer = backend._loaded.processor.tokenizer  # type: ignore[union-attr]
    assert len(tokenizer) == 768  # the model's logits may be wider (padded embeddings): here 800
    grammar = compile_schema(tokenizer, DRAFT_SCHEMA, vocab_size=800, stop_token_ids={2})
    scores = torch.zeros((2, 800))

    masked = SchemaLogitsProcessor([grammar, None])(torch.zeros((2, 3), dtype=torch.long), scores)

    assert torch.equal(scores, torch.zeros((2, 800)))  # transformers keeps this tensor as the raw logits
    assert not torch.isinf(masked[1]).any()  # the free row
    allowed = (~torch.isinf(masked[0])).nonzero().flatten().tolist()
    assert allowed and max(allowed) < 768 and 2 not in allowed  # no padding id, no stop before the JSON
    assert all(tokenizer.decode([token]).startswith("{") for token in allowed)
