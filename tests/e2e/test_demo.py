"""`pacs-vlm demo` runs the whole ingest path on embedded defaults and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.peers import REPO


def test_demo_stores_assembles_and_queues_every_study(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "all studies stored, assembled and queued" in result.stdout
    engine = create_engine(f"sqlite:///{tmp_path / 'var/demo/pacs-vlm.sqlite'}")
    with engine.connect() as conn:
        states = conn.execute(text("SELECT state, count(*) FROM studies GROUP BY state")).all()
        instances = conn.execute(text("SELECT count(*) FROM instances")).scalar_one()
    engine.dispose()
    assert states == [("queued", 8)]
    assert instances == 73
    assert len(list((tmp_path / "var/demo/broker/queue").glob("*"))) == 8
