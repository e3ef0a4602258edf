"""A fast fingerprint of a checkpoint's weights, for when no Hugging Face revision is recorded.

Hashing 15 GB of shards on every start would take minutes, so the fingerprint covers what
changes whenever weights change, and little else: ``config.json``, each safetensors file's size
and JSON header (tensor names, dtypes, shapes and byte offsets) and a few 1 MiB samples of
each shard's data at fixed fractions of its length.  Files smaller than the samples together
are hashed whole.  A retrained or re-quantised checkpoint changes the header or the sampled
bytes; a single edited weight in an unsampled region of a large shard would not be noticed,
which is the price of reading megabytes instead of gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

#: Bytes per data sample, and samples per shard (first, last and evenly spaced between).
SAMPLE_BYTES = 1 << 20
SAMPLES_PER_SHARD = 4
#: Hex digits kept: 160 bits, and short enough for DICOM's 64-character Algorithm Version.
FINGERPRINT_HEX_DIGITS = 40
FINGERPRINT_PREFIX = "sha256:"

_HEADER_LENGTH = struct.Struct("<Q")
#: safetensors caps its header at 100 MB; anything larger is a corrupt or foreign file.
_MAX_HEADER_BYTES = 100_000_000
_VERSION_TAG = b"pacs-vlm weights fingerprint v1\x00"


class CorruptWeights(ValueError):
    """A file is not a complete safetensors file."""


@dataclass(frozen=True)
class SafetensorsHeader:
    """The JSON header of one safetensors file.

    Attributes
    ----------
    raw : bytes
        The header exactly as stored (length prefix included).
    tensors : dict
        Tensor name to its dtype, shape and ``data_offsets``.
    data_start : int
        File offset where tensor data begins.
    data_length : int
        Bytes of tensor data the header describes (the file must hold at least this much).
    """

    raw: bytes
    tensors: dict[str, Any]
    data_start: int
    data_length: int


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read and check the header of a ``.safetensors`` file.

    Raises
    ------
    CorruptWeights
        When the header is truncated or not valid safetensors JSON.
    """
    with path.open("rb") as stream:
        prefix = stream.read(_HEADER_LENGTH.size)
        if len(prefix) < _HEADER_LENGTH.size:
            raise CorruptWeights(f"{path.name} is shorter than a safetensors header")
        (length,) = _HEADER_LENGTH.unpack(prefix)
        if length > _MAX_HEADER_BYTES:
            raise CorruptWeights(f"{path.name} has an implausible header length ({length} bytes)")
        body = stream.read(length)
    if len(body) < length:
        raise CorruptWeights(f"{path.name} ends inside its header (truncated copy?)")
    try:
        header = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptWeights(f"{path.name} has no valid safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise CorruptWeights(f"{path.name} has no valid safetensors header")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    try:
        data_length = max((int(entry["data_offsets"][1]) for entry in tensors.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as error:
        raise CorruptWeights(f"{path.name} has a malformed tensor entry in its header") from error
    return SafetensorsHeader(
        raw=prefix + body, tensors=tensors, data_start=_HEADER_LENGTH.size + length, data_length=data_length
    )


def sample_offsets(data_length: int) -> list[tuple[int, int]]:
    """Where to sample a shard's data: ``(offset, length)`` pairs relative to the data start.

    One span covering everything for small data, else evenly spaced 1 MiB spans from the first to the
    last byte.
    """
    if data_length <= SAMPLE_BYTES * SAMPLES_PER_SHARD:
        return [(0, data_length)] if data_length else []
    last = data_length - SAMPLE_BYTES
    return [(last * index // (SAMPLES_PER_SHARD - 1), SAMPLE_BYTES) for index in range(SAMPLES_PER_SHARD)]


def _update_with_span(digest: Any, stream: BinaryIO, offset: int, length: int) -> None:
    stream.seek(offset)
    remaining = length
    while remaining:
        chunk = stream.read(min(remaining, SAMPLE_BYTES))
        if not chunk:
            raise CorruptWeights(f"file ends {remaining} bytes before its header says")
        digest.update(chunk)
        remaining -= len(chunk)


def weights_fingerprint(model_dir: Path, shards: Sequence[Path] | None = None) -> str:
    """Fingerprint a checkpoint's ``config.json`` and weights: ``sha256:`` followed by 40 hex digits.

    ``shards`` are the safetensors files to cover; default: every ``*.safetensors`` file in ``model_dir``.

    Raises
    ------
    CorruptWeights
        When a shard is truncated or not safetensors.
    """
    digest = hashlib.sha256(_VERSION_TAG)
    config = (model_dir / "config.json").read_bytes()
    digest.update(b"config.json\x00%d\x00" % len(config) + config)
    files = sorted(shards if shards is not None else model_dir.glob("*.safetensors"), key=lambda path: path.name)
    for shard in files:
        header = read_safetensors_header(shard)
        size = shard.stat().st_size
        digest.update(shard.name.encode("utf-8") + b"\x00%d\x00" % size + header.raw)
        with shard.open("rb") as stream:
            for offset, length in sample_offsets(size - header.data_start):
                _update_with_span(digest, stream, header.data_start + offset, length)
    return FINGERPRINT_PREFIX + digest.hexdigest()[:FINGERPRINT_HEX_DIGITS]
