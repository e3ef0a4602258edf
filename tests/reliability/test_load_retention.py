"""``python -m bench.load --retention`` at a small size: signed seed studies are purged, no load instance lost."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.peers import REPO
from tests.support.records import db_rows


def test_small_load_with_retention_purges_seed_studies_and_loses_nothing(
    migrated_postgres_url: str, redis_url: str
) -> None:
    command = [sys.executable, "-m", "bench.load", "--associations", "2", "--instances", "20", "--retention"]
    command += ["--database-url", migrated_postgres_url, "--broker-url", redis_url]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"load stored=40/40 p99_ms=\d+\.\d lost=0 purged=(\d+)", last)
    assert found is not None, last
    assert int(found.group(1)) >= 1
    purges = db_rows(migrated_postgres_url, "SELECT detail FROM audit_events WHERE action = 'retention.purge'")
    assert sum(int(detail["studies"]) for (detail,) in purges) == int(found.group(1))
    # the seed studies' reports stay (no report_days), their images go; the load's 40 instances all remain
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM reports") == [(4,)]
    remaining = db_rows(migrated_postgres_url, "SELECT count(*) FROM instances")[0][0]
    assert remaining == 40 + 20 * (2 - int(found.group(1)))
