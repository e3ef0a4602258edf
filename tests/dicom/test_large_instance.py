"""A large multi-frame instance from dcmtk storescu costs the listener a buffer, not its size.

The same path as ``python -m bench.large_instance`` (which sends 2 GiB), at 128 MiB so the suite stays quick:
the data set goes to its instance file as it arrives and is stored byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.hostile import peak_rss_mib, reset_peak_rss
from bench.large_instance import FRAME_BYTES, RSS_LIMIT_MIB, dataset_digest, storescu, write_multiframe
from tests.support.peers import ListenerProcess


def test_a_large_multiframe_instance_is_stored_with_little_listener_memory(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    frames = 64  # 128 MiB of pixel data
    source = tmp_path / "large.dcm"
    sop_uid, study_uid = write_multiframe(source, frames)
    env = {"PACSVLM_MAX_INSTANCE_BYTES": str(frames * FRAME_BYTES + 2**20)}
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=env)
    assert listener.process is not None
    pid = listener.process.pid
    warm = tmp_path / "warm.dcm"
    write_multiframe(warm, 1)
    assert storescu(listener.port, warm, "STORESCU").returncode == 0  # the first association loads its code
    reset_peak_rss(pid)
    before = peak_rss_mib(pid)
    sent = storescu(listener.port, source, "STORESCU", timeout=600)
    grown = peak_rss_mib(pid) - before
    assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stderr, sent.stderr[-800:]
    assert grown < RSS_LIMIT_MIB, f"a 128 MiB instance raised the listener's peak RSS by {grown:.0f} MiB"
    stored = next(listener.instance_root.glob(f"{study_uid}/*/{sop_uid}.dcm"))
    assert dataset_digest(stored) == dataset_digest(source)
    assert listener.partial_files() == []
