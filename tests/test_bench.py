"""The ingest benchmark runs end to end on a small series (the full run is `make bench`, not a test)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.peers import REPO


def test_quick_ingest_benchmark_prints_a_table_and_the_summary_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    for receiver in ("storescp", "orthanc", "ours", "pynetdicom-floor"):
        assert any(line.lstrip("│ ").startswith(receiver) for line in lines), receiver
    assert re.fullmatch(r"ingest ours_vs_storescp=\d+\.\d\d ours_vs_orthanc=\d+\.\d\d", lines[-1]), lines[-1]
