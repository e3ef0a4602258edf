"""The backend contract's value objects and error."""

from __future__ import annotations

import dataclasses

import pytest

from models.backend import (
    GenerationRequest,
    GenerationResult,
    ModelIdentity,
    ModelNotStaged,
    VisionLanguageBackend,
    staging_instructions,
)
from tests.models.samples import radiograph


def test_requests_validate_themselves() -> None:
    image = radiograph(32, 32)
    request = GenerationRequest("r1", "Describe.", [image])  # type: ignore[arg-type]
    assert request.images == (image,)
    assert request.max_new_tokens == 512
    with pytest.raises(ValueError, match="request_id"):
        GenerationRequest("", "Describe.", ())
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationRequest("r1", "Describe.", (), max_new_tokens=0)
    with pytest.raises(TypeError, match=r"images\[0\] is a str"):
        GenerationRequest("r1", "Describe.", ("image.png",))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.prompt = "other"  # type: ignore[misc]


def test_a_fake_backend_satisfies_the_protocol() -> None:
    class Instant:
        @property
        def identity(self) -> ModelIdentity:
            return ModelIdentity("test/instant", "0" * 40, "llava")

        def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
            return [GenerationResult(r.request_id, "{}", 10, 1, 0.0) for r in requests]

    assert isinstance(Instant(), VisionLanguageBackend)


def test_staging_instructions_name_the_commands() -> None:
    text = staging_instructions(None, None)
    assert "hf download <repo, e.g. google/medgemma-4b-it> --local-dir <dir>" in text
    assert "huggingface-cli download" in text
    assert "PACSVLM_MODEL=<dir>" in text
    error = ModelNotStaged("no weights", repository="lingshu-medical-mllm/Lingshu-7B")
    assert "hf download lingshu-medical-mllm/Lingshu-7B --local-dir" in str(error)
    assert isinstance(error, RuntimeError)
