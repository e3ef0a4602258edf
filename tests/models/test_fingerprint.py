"""The weights fingerprint: stable, sensitive to weights and configuration, and cheap on big shards."""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from models.fingerprint import (
    SAMPLE_BYTES,
    SAMPLES_PER_SHARD,
    CorruptWeights,
    read_safetensors_header,
    sample_offsets,
    weights_fingerprint,
)


@pytest.fixture
def checkpoint(smoke_dir: Callable[[str], Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(smoke_dir("llava"), tmp_path / "llava"))


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as stream:
        stream.seek(offset)
        value = stream.read(1)[0]
        stream.seek(offset)
        stream.write(bytes([value ^ 0xFF]))


def test_the_fingerprint_is_stable_and_independent_of_the_path(checkpoint: Path, tmp_path: Path) -> None:
    fingerprint = weights_fingerprint(checkpoint)
    assert re.fullmatch(r"sha256:[0-9a-f]{40}", fingerprint)
    assert weights_fingerprint(checkpoint) == fingerprint
    assert weights_fingerprint(Path(shutil.copytree(checkpoint, tmp_path / "elsewhere"))) == fingerprint


def test_any_weight_change_in_a_small_checkpoint_changes_it(checkpoint: Path) -> None:
    before = weights_fingerprint(checkpoint)
    weights = checkpoint / "model.safetensors"
    flip_byte(weights, weights.stat().st_size // 2)
    assert weights_fingerprint(checkpoint) != before


def test_a_configuration_change_changes_it(checkpoint: Path) -> None:
    before = weights_fingerprint(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["image_seq_length"] = 577
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert weights_fingerprint(checkpoint) != before


def write_large_shard(path: Path, data_bytes: int) -> int:
    """A sparse safetensors file with one big tensor; returns where its data starts."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]}}).encode()
    with path.open("wb") as stream:
        stream.write(struct.pack("<Q", len(header)) + header)
        stream.truncate(8 + len(header) + data_bytes)
    return 8 + len(header)


def test_a_large_shard_is_sampled_not_read_whole(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    shard = tmp_path / "model.safetensors"
    data_start = write_large_shard(shard, 2 * 2**30)

    started = time.perf_counter()
    before = weights_fingerprint(tmp_path)
    assert time.perf_counter() - started < 2.0  # 4 MiB read of a 2 GiB shard

    flip_byte(shard, shard.stat().st_size - 1)  # the last sample covers the last byte
    after_last = weights_fingerprint(tmp_path)
    flip_byte(shard, data_start + 10)  # the first sample covers the first bytes
    assert len({before, after_last, weights_fingerprint(tmp_path)}) == 3


def test_sample_offsets() -> None:
    assert sample_offsets(0) == []
    assert sample_offsets(1000) == [(0, 1000)]
    big = 10 * 2**30
    spans = sample_offsets(big)
    assert len(spans) == SAMPLES_PER_SHARD
    assert spans[0] == (0, SAMPLE_BYTES)
    assert spans[-1] == (big - SAMPLE_BYTES, SAMPLE_BYTES)
    assert [offset for offset, _ in spans] == sorted({offset for offset, _ in spans})


def test_corrupt_headers_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 50) + b'{"w": ')
    with pytest.raises(CorruptWeights, match="ends inside its header"):
        read_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(CorruptWeights, match="no valid safetensors header"):
        read_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 2**40))
    with pytest.raises(CorruptWeights, match="implausible header length"):
        read_safetensors_header(path)
