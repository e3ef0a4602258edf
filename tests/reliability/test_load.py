"""``python -m bench.load`` at a small size: concurrent associations while a worker drafts, nothing lost."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.peers import REPO
from tests.support.records import db_rows


def test_small_load_stores_every_instance_once_and_drafts_every_study_once(
    migrated_postgres_url: str, redis_url: str
) -> None:
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--associations",
        "3",
        "--instances",
        "20",
        "--database-url",
        migrated_postgres_url,
        "--broker-url",
        redis_url,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"load stored=60/60 p99_ms=\d+\.\d", lines[-1]), lines[-1]
    assert any("C-STORE p99 (ms)" in line for line in lines) and any("listener peak RSS" in line for line in lines)
    assert db_rows(migrated_postgres_url, "SELECT count(*), count(DISTINCT sop_instance_uid) FROM instances") == [
        (60, 60)
    ]
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM studies") == [(3,)]
    drafts = db_rows(migrated_postgres_url, "SELECT study_id, count(*) FROM reports GROUP BY study_id")
    assert len(drafts) == 3 and all(count == 1 for _, count in drafts)
