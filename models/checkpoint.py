"""A staged checkpoint directory: cheap completeness checks and the model's identity.

Everything here reads small files only (``config.json``, tokenizer and processor configurations,
safetensors headers), so a worker can refuse a half-copied model at start-up in milliseconds,
long before it would spend a minute loading weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.backend import ModelIdentity, ModelNotStaged
from models.fingerprint import CorruptWeights, read_safetensors_header, weights_fingerprint
from models.registry import ModelFamily, family_for_config, read_model_config

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
#: Where ``hf download --local-dir`` records, per file, the commit it was downloaded at.
DOWNLOAD_METADATA_DIR = Path(".cache") / "huggingface" / "download"
#: How much of a README is searched for the repository's id (model cards name it near the top).
README_SCAN_BYTES = 65536

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPOSITORY_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_SHARD_NAME = re.compile(r"-\d+-of-\d+\.safetensors$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class StagedCheckpoint:
    """A model directory that passed the cheap completeness checks.

    With its family, its parsed ``config.json`` and the safetensors files that hold its weights.
    """

    directory: Path
    family: ModelFamily
    config: dict[str, Any] = field(hash=False, compare=False)
    weight_files: tuple[Path, ...] = ()

    @property
    def model_type(self) -> str:
        """The ``model_type`` of ``config.json`` ('' when absent)."""
        return str(self.config.get("model_type") or "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _check_complete(shard: Path, directory: Path, repository: str) -> set[str]:
    """Return the tensor names of a shard whose header and length are intact."""
    try:
        header = read_safetensors_header(shard)
    except (CorruptWeights, OSError) as error:
        raise ModelNotStaged(f"{error}; copy it again", directory=directory, repository=repository) from error
    size = shard.stat().st_size
    if size < header.data_start + header.data_length:
        raise ModelNotStaged(
            f"{shard.name} is truncated ({size} of {header.data_start + header.data_length} bytes); copy it again",
            directory=directory,
            repository=repository,
        )
    return set(header.tensors)


def _weight_files(directory: Path, repository: str) -> tuple[Path, ...]:
    index_path = directory / WEIGHTS_INDEX_FILE
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelNotStaged(
                f"{WEIGHTS_INDEX_FILE} has no weight_map; copy it again", directory=directory, repository=repository
            )
        shards = sorted({str(name) for name in weight_map.values()})
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise ModelNotStaged(
                f"{len(missing)} of {len(shards)} weight shards named in {WEIGHTS_INDEX_FILE} are missing "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
                directory=directory,
                repository=repository,
            )
        tensors: set[str] = set()
        for name in shards:
            tensors |= _check_complete(directory / name, directory, repository)
        absent = sorted(set(weight_map) - tensors)
        if absent:
            raise ModelNotStaged(
                f"{len(absent)} tensors listed in {WEIGHTS_INDEX_FILE} are in none of its shards (e.g. {absent[0]}); "
                "the shards are from another revision",
                directory=directory,
                repository=repository,
            )
        return tuple(directory / name for name in shards)

    files = sorted(directory.glob("*.safetensors"))
    if files:
        if any(_SHARD_NAME.search(path.name) for path in files):
            raise ModelNotStaged(
                f"sharded weights without {WEIGHTS_INDEX_FILE}", directory=directory, repository=repository
            )
        for path in files:
            _check_complete(path, directory, repository)
        return tuple(files)
    if any(directory.glob("pytorch_model*.bin")):
        raise ModelNotStaged(
            "only PyTorch .bin weights; this service loads safetensors weights only (download the repository's "
            "*.safetensors files, or convert the .bin files once with safetensors)",
            directory=directory,
            repository=repository,
        )
    raise ModelNotStaged(
        f"no weights ({WEIGHTS_FILE} or shards with {WEIGHTS_INDEX_FILE})", directory=directory, repository=repository
    )


def _has_chat_template(directory: Path) -> bool:
    if any((directory / name).is_file() for name in _TEMPLATE_FILES):
        return True
    return any(
        _read_json(directory / name).get("chat_template") for name in ("tokenizer_config.json", "processor_config.json")
    )


def inspect_checkpoint(model_dir: Path) -> StagedCheckpoint:
    """Check that a directory holds a complete, supported checkpoint (reads only small files).

    Raises
    ------
    ModelNotStaged
        When anything is missing: the directory, ``config.json``, weights (or shards named by the
        index), tokenizer, image processor configuration or chat template.
    models.registry.UnsupportedModel
        When the checkpoint is of no supported family.
    """
    directory = model_dir.expanduser().resolve()
    config = read_model_config(directory)
    hint = _repository_hint(directory, config)
    family = family_for_config(config, hint or directory.name)
    repository = hint or family.examples[0]
    weight_files = _weight_files(directory, repository)
    has_vocabulary = (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    if not has_vocabulary and not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelNotStaged(
            "no tokenizer files (tokenizer.json, tokenizer.model, or vocab.json with merges.txt)",
            directory=directory,
            repository=repository,
        )
    # LongLLaVA's processor has CLIP-336 defaults of its own; the other families need the checkpoint's file
    if family.name != "longllava" and not any((directory / name).is_file() for name in _PROCESSOR_FILES):
        raise ModelNotStaged(
            f"no image processor configuration ({' or '.join(_PROCESSOR_FILES)})",
            directory=directory,
            repository=repository,
        )
    if not _has_chat_template(directory) and family.fallback_chat_template is None:
        raise ModelNotStaged(
            "no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json); "
            "download the repository's current revision",
            directory=directory,
            repository=repository,
        )
    return StagedCheckpoint(directory=directory, family=family, config=config, weight_files=weight_files)


def _downloaded_commit(directory: Path, filename: str) -> str | None:
    metadata = directory / DOWNLOAD_METADATA_DIR / f"{filename}.metadata"
    try:
        first_line = metadata.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError):
        return None
    return first_line if _COMMIT.match(first_line) else None


def recorded_revision(directory: Path, weight_files: tuple[Path, ...]) -> str | None:
    """The 40-digit Hugging Face commit the checkpoint was downloaded at, where that is recorded.

    Read from a Hugging Face cache snapshot path or from the download metadata that ``hf download
    --local-dir`` writes; every weight file must have been downloaded at the same commit as
    ``config.json``. None when not recorded or when files disagree.
    """
    if directory.parent.name == "snapshots" and _COMMIT.match(directory.name):
        return directory.name
    commit = _downloaded_commit(directory, "config.json")
    if commit is None:
        return None
    for path in weight_files:
        if _downloaded_commit(directory, path.relative_to(directory).as_posix()) != commit:
            return None
    return commit


def _repository_hint(directory: Path, config: dict[str, Any]) -> str | None:
    """A repository id for this directory, only where it agrees with the directory's name."""
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--"):
        return directory.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
    name = directory.name
    name_or_path = str(config.get("_name_or_path") or "")
    if _REPOSITORY_ID.match(name_or_path) and name_or_path.split("/")[1].lower() == name.lower():
        return name_or_path
    readme = directory / "README.md"
    if readme.is_file():
        with readme.open("rb") as stream:
            text = stream.read(README_SCAN_BYTES).decode("utf-8", errors="replace")
        match = re.search(rf"(?<![\w.-])([A-Za-z0-9][\w.-]*)/{re.escape(name)}(?![\w-])(?!\.\w)", text, re.IGNORECASE)
        if match:
            return f"{match.group(1)}/{name}"
    return None


def model_id_for(directory: Path, config: dict[str, Any]) -> str:
    """The model's id: its Hugging Face repository where the directory shows it, else the directory name.

    ``org/name`` from a Hugging Face cache path, from ``_name_or_path`` or from the README when that
    repository's name is the directory's name (a fine-tune often keeps its base model's
    ``_name_or_path``, which must not be taken for its own).
    """
    return _repository_hint(directory, config) or directory.name


def checkpoint_identity(checkpoint: StagedCheckpoint) -> ModelIdentity:
    """Identify a checkpoint that passed :func:`inspect_checkpoint`: model id, revision (or fingerprint), family.

    The identity is recorded with every draft.
    """
    revision = recorded_revision(checkpoint.directory, checkpoint.weight_files)
    if revision is None:
        revision = weights_fingerprint(checkpoint.directory, checkpoint.weight_files)
    return ModelIdentity(
        model_id=model_id_for(checkpoint.directory, checkpoint.config),
        revision=revision,
        family=checkpoint.family.name,
    )
