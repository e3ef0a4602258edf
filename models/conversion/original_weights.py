"""Reading an original release's weights: shards in safetensors or PyTorch ``.bin``, and a CLIP tower.

Original LLaVA-code releases were saved with ``save_pretrained`` of transformers 4.x: one file or
shards named by an index (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``).
PyTorch files are read with ``weights_only=True``, so a pickle cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.conversion import ConversionError

if TYPE_CHECKING:
    import torch

_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
#: CLIP's own normalisation, used when a vision tower directory has no ``preprocessor_config.json``.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Prefix of the vision encoder's weights inside a ``CLIPModel`` or ``CLIPVisionModel`` checkpoint.
CLIP_VISION_PREFIX = "vision_model."


def read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON file that must hold an object.

    Raises
    ------
    ConversionError
        When the file is missing, unreadable or not a JSON object.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} is unreadable ({error}); copy it again") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path} does not hold a JSON object; copy it again")
    return value


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, all present.

    The shards named by an index, else the single weights file, else every ``*.safetensors``.

    Raises
    ------
    ConversionError
        When an index names missing shards, or there are no weights.
    """
    for name in _INDEX_FILES:
        index_path = directory / name
        if index_path.is_file():
            weight_map = read_json_object(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index_path} has no weight_map; copy it again")
            shards = sorted({str(shard) for shard in weight_map.values()})
            missing = [shard for shard in shards if not (directory / shard).is_file()]
            if missing:
                raise ConversionError(
                    f"{len(missing)} of {len(shards)} weight shards named in {name} are missing from {directory} "
                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); copy them first"
                )
            return [directory / shard for shard in shards]
    for name in _SINGLE_FILES:
        if (directory / name).is_file():
            return [directory / name]
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    raise ConversionError(
        f"no weights in {directory} (model.safetensors, pytorch_model.bin, or shards with their index file)"
    )


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Read every tensor of the given safetensors or PyTorch ``.bin`` files into CPU memory, by name.

    Raises
    ------
    ConversionError
        When a file is corrupt, or two files hold the same tensor.
    """
    import torch
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                part = load_file(str(path), device="cpu")
            else:
                part = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # safetensors and pickle raise many types for a damaged file
            raise ConversionError(f"{path} cannot be read ({type(error).__name__}: {error}); copy it again") from None
        if not isinstance(part, dict):
            raise ConversionError(f"{path} does not hold a dictionary of tensors")
        duplicated = sorted(set(part) & set(tensors))
        if duplicated:
            raise ConversionError(f"{duplicated[0]} is in more than one weight file; the shards are from two revisions")
        tensors.update(part)
    return tensors


@dataclass(frozen=True)
class VisionTower:
    """A CLIP vision encoder: its configuration, weights and image normalisation.

    Attributes
    ----------
    config : transformers.CLIPVisionConfig
        The encoder's configuration.
    tensors : dict of str to torch.Tensor
        Its weights, named as in ``CLIPVisionModel`` without the ``vision_model.`` prefix.
    image_mean, image_std : tuple of float
        The normalisation its image processor applies.
    source : str
        Where it came from (a directory, or ``checkpoint``).
    """

    config: Any
    tensors: dict[str, Any] = field(repr=False)
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    source: str = "checkpoint"


def _normalisation(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    settings = read_json_object(path)
    mean = settings.get("image_mean") or OPENAI_CLIP_MEAN
    std = settings.get("image_std") or OPENAI_CLIP_STD
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def read_vision_tower(directory: Path, *, expected_name: str) -> VisionTower:
    """Read a locally staged CLIP model (e.g. ``openai/clip-vit-large-patch14-336``) as a vision tower.

    Parameters
    ----------
    directory : Path
        The CLIP model's directory (a ``CLIPModel`` or ``CLIPVisionModel`` checkpoint).
    expected_name : str
        The tower the LLaVA checkpoint names (for messages).

    Raises
    ------
    ConversionError
        When the directory is not a CLIP checkpoint or holds no vision encoder weights.
    """
    from transformers import CLIPVisionConfig

    if not directory.is_dir():
        raise ConversionError(f"the vision tower directory {directory} does not exist (stage {expected_name} there)")
    model_type = str(read_json_object(directory / "config.json").get("model_type") or "")
    if model_type not in ("clip", "clip_vision_model"):
        raise ConversionError(
            f"{directory} is not a CLIP checkpoint (model_type {model_type or 'missing'}); stage {expected_name} there"
        )
    config_class: Any = CLIPVisionConfig
    config = config_class.from_pretrained(directory, local_files_only=True)
    every = read_tensors(weight_files(directory))
    tensors = {
        name.removeprefix(CLIP_VISION_PREFIX): tensor
        for name, tensor in every.items()
        if name.startswith(CLIP_VISION_PREFIX)
    }
    if not tensors and model_type == "clip_vision_model":  # saved by transformers 5.x, without the prefix
        tensors = {name: tensor for name, tensor in every.items() if name.startswith(("embeddings.", "encoder."))}
        tensors.update({name: tensor for name, tensor in every.items() if "layrnorm" in name or "layernorm" in name})
    if not tensors:
        raise ConversionError(f"{directory} holds no CLIP vision encoder weights ({CLIP_VISION_PREFIX}*)")
    mean, std = _normalisation(directory)
    return VisionTower(config=config, tensors=tensors, image_mean=mean, image_std=std, source=str(directory))


#: Width of one attention head in OpenAI's CLIP vision transformers (ViT-B/16, ViT-L/14, ViT-L/14-336).
CLIP_HEAD_DIM = 64


def infer_clip_vision_config(tensors: dict[str, Any]) -> Any:
    """Infer a ``CLIPVisionConfig`` from the encoder's weight shapes.

    Used when a checkpoint carries its (fine-tuned) vision tower but no CLIP directory is given;
    everything follows from the shapes except the head count, which assumes CLIP's 64-wide heads.
    ``tensors`` are named as in ``CLIPVisionModel`` without ``vision_model.``.

    Raises
    ------
    ConversionError
        When a weight the shapes are read from is missing.
    """
    from transformers import CLIPVisionConfig

    try:
        patch = tensors["embeddings.patch_embedding.weight"]
        positions = tensors["embeddings.position_embedding.weight"]
        fc1 = tensors["encoder.layers.0.mlp.fc1.weight"]
    except KeyError as error:
        raise ConversionError(f"the checkpoint's vision tower has no {error.args[0]} weight") from None
    hidden_size, num_channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    side = round((int(positions.shape[0]) - 1) ** 0.5)
    layers = {int(name.split(".")[2]) for name in tensors if name.startswith("encoder.layers.")}
    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=max(1, hidden_size // CLIP_HEAD_DIM),
        num_channels=num_channels,
        image_size=side * patch_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
