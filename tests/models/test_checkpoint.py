"""Staged directories: what counts as complete, what the error says, and the model's identity."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from models.backend import ModelNotStaged
from models.checkpoint import (
    DOWNLOAD_METADATA_DIR,
    checkpoint_identity,
    inspect_checkpoint,
    model_id_for,
    recorded_revision,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def staged(smoke_dir: Callable[[str], Path], tmp_path: Path) -> Path:
    """A private copy of the tiny MedGemma checkpoint, free to damage."""
    return Path(shutil.copytree(smoke_dir("medgemma"), tmp_path / "medgemma-4b-it"))


def assert_says_how_to_stage(error: ModelNotStaged) -> None:
    message = str(error)
    assert "Model not staged" in message
    assert "hf download" in message
    assert "--local-dir" in message
    assert "PACSVLM_MODEL=" in message


def shard(directory: Path) -> None:
    """Split the weights into two shards with an index, as large checkpoints ship."""
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / "model.safetensors")
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file_name, tensor_names in halves.items():
        save_file({n: weights[n] for n in tensor_names}, directory / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensor_names, file_name))
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_complete_checkpoint_passes(staged: Path) -> None:
    checkpoint = inspect_checkpoint(staged)
    assert checkpoint.family.name == "medgemma"
    assert checkpoint.model_type == "gemma3"
    assert [p.name for p in checkpoint.weight_files] == ["model.safetensors"]


def test_a_sharded_checkpoint_passes(staged: Path) -> None:
    shard(staged)
    checkpoint = inspect_checkpoint(staged)
    assert [p.name for p in checkpoint.weight_files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


def test_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotStaged, match="does not exist") as caught:
        inspect_checkpoint(tmp_path / "nowhere")
    assert_says_how_to_stage(caught.value)
    assert str(tmp_path / "nowhere") in str(caught.value)


def test_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotStaged, match=re.escape("no config.json")) as caught:
        inspect_checkpoint(tmp_path)
    assert_says_how_to_stage(caught.value)


def test_a_config_without_weights(staged: Path) -> None:
    (staged / "model.safetensors").unlink()
    with pytest.raises(ModelNotStaged, match="no weights") as caught:
        inspect_checkpoint(staged)
    assert_says_how_to_stage(caught.value)
    assert "google/medgemma-4b-it" in str(caught.value)  # the family's repository is suggested


def test_an_index_naming_a_missing_shard(staged: Path) -> None:
    shard(staged)
    (staged / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotStaged, match=r"1 of 2 weight shards .* missing \(model-00002-of-00002") as caught:
        inspect_checkpoint(staged)
    assert_says_how_to_stage(caught.value)


def test_a_truncated_shard(staged: Path) -> None:
    weights = staged / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelNotStaged, match=re.escape("model.safetensors is truncated")):
        inspect_checkpoint(staged)
    weights.write_bytes(data[:5])
    with pytest.raises(ModelNotStaged, match="shorter than a safetensors header"):
        inspect_checkpoint(staged)


def test_shards_from_another_revision(staged: Path) -> None:
    shard(staged)
    index = staged / "model.safetensors.index.json"
    content = json.loads(index.read_text())
    content["weight_map"]["model.extra_layer.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(content))
    with pytest.raises(ModelNotStaged, match="another revision"):
        inspect_checkpoint(staged)


def test_shards_without_their_index(staged: Path) -> None:
    shard(staged)
    (staged / "model.safetensors.index.json").unlink()
    with pytest.raises(ModelNotStaged, match=re.escape("sharded weights without model.safetensors.index.json")):
        inspect_checkpoint(staged)


def test_pytorch_bin_weights_only(staged: Path) -> None:
    (staged / "model.safetensors").rename(staged / "pytorch_model.bin")
    with pytest.raises(ModelNotStaged, match="safetensors weights only"):
        inspect_checkpoint(staged)


@pytest.mark.parametrize(
    ("removed", "problem"),
    [
        (("tokenizer.json",), "no tokenizer files"),
        (("processor_config.json",), "no image processor configuration"),
        (("chat_template.jinja",), "no chat template"),
    ],
)
def test_missing_tokenizer_processor_or_template(staged: Path, removed: tuple[str, ...], problem: str) -> None:
    for name in removed:
        (staged / name).unlink()
    with pytest.raises(ModelNotStaged, match=problem) as caught:
        inspect_checkpoint(staged)
    assert_says_how_to_stage(caught.value)


def test_a_family_with_a_documented_layout_needs_no_template_file(
    smoke_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(smoke_dir("huatuogpt-vision"), tmp_path / "HuatuoGPT-Vision-7B-hf"))
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    del settings["chat_template"]
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    assert inspect_checkpoint(directory).family.name == "huatuogpt-vision"


def test_the_error_survives_pickling_between_processes(tmp_path: Path) -> None:
    error = ModelNotStaged("no weights", directory=tmp_path, repository="google/medgemma-4b-it")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ModelNotStaged
    assert str(copy) == str(error)
    assert (copy.problem, copy.directory, copy.repository) == ("no weights", tmp_path, "google/medgemma-4b-it")
    assert str(ModelNotStaged("PACSVLM_MODEL is not set")).startswith("Model not staged: PACSVLM_MODEL is not set.")


def record_download(directory: Path, names: list[str], commit: str = COMMIT) -> None:
    """Write the per-file metadata that ``hf download --local-dir`` leaves behind."""
    for name in names:
        metadata = directory / DOWNLOAD_METADATA_DIR / f"{name}.metadata"
        metadata.parent.mkdir(parents=True, exist_ok=True)
        metadata.write_text(f"{commit}\n{'e' * 64}\n1712656091.123\n")


def test_the_downloaded_revision_is_the_identity(staged: Path) -> None:
    record_download(staged, ["config.json", "model.safetensors"])
    identity = checkpoint_identity(inspect_checkpoint(staged))
    assert identity.revision == COMMIT
    assert identity.family == "medgemma"


def test_weights_from_another_download_fall_back_to_the_fingerprint(staged: Path) -> None:
    record_download(staged, ["config.json"])
    record_download(staged, ["model.safetensors"], commit="f" * 40)
    checkpoint = inspect_checkpoint(staged)
    assert recorded_revision(checkpoint.directory, checkpoint.weight_files) is None
    assert checkpoint_identity(checkpoint).revision.startswith("sha256:")


def test_a_hugging_face_cache_snapshot_names_repository_and_revision(
    smoke_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    snapshot = tmp_path / "hub" / "models--google--medgemma-4b-it" / "snapshots" / COMMIT
    shutil.copytree(smoke_dir("medgemma"), snapshot)
    identity = checkpoint_identity(inspect_checkpoint(snapshot))
    assert (identity.model_id, identity.revision) == ("google/medgemma-4b-it", COMMIT)


def test_model_id_sources(staged: Path) -> None:
    assert model_id_for(staged, {}) == "medgemma-4b-it"
    # A fine-tune keeps its base model's _name_or_path: that is not its own name.
    assert model_id_for(staged, {"_name_or_path": "google/gemma-3-4b-it"}) == "medgemma-4b-it"
    assert model_id_for(staged, {"_name_or_path": "google/medgemma-4b-it"}) == "google/medgemma-4b-it"
    (staged / "README.md").write_text(
        "---\nbase_model: google/gemma-3-4b-pt\n---\n# MedGemma\nSee https://huggingface.co/google/medgemma-4b-it.\n"
    )
    assert model_id_for(staged, {}) == "google/medgemma-4b-it"
