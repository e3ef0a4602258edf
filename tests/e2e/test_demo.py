"""`pacs-vlm demo` runs the whole path on embedded defaults (C-STORE in, draft out) and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.peers import REPO


def test_demo_drafts_every_image_study_and_explains_the_rest(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "randomly initialised smoke test" in result.stdout
    assert "7 of 8 studies drafted" in result.stdout
    assert result.stdout.count("AI-generated draft, not verified by a radiologist.") == 7
    assert (tmp_path / "var/smoke-model/llava/config.json").is_file()
    assert "pacs-vlm api --port 8000" in result.stdout  # how to review the drafts in the browser
    # ... as a radiologist of the demo's site (an administrator does not sign), whose password is shown once
    assert "sign in as radiologist demo_rad (site DEMO), password " in result.stdout
    # the file-system queue keeps everything under the data folder, its exchange tables included
    assert (tmp_path / "var/demo/broker/control").is_dir() and not (tmp_path / "control").exists()
    engine = create_engine(f"sqlite:///{tmp_path / 'var/demo/pacs-vlm.sqlite'}")
    with engine.connect() as conn:
        states = dict(conn.execute(text("SELECT state, count(*) FROM studies GROUP BY state")).all())
        instances = conn.execute(text("SELECT count(*) FROM instances")).scalar_one()
        drafts = conn.execute(
            text("SELECT count(*) FROM reports WHERE status = 'draft' AND verification = 'UNVERIFIED' AND ai_generated")
        ).scalar_one()
        errors = conn.execute(text("SELECT last_error FROM analysis_jobs WHERE state = 'failed'")).scalars().all()
        readers = conn.execute(
            text("SELECT users.role, sites.code FROM users JOIN sites ON users.site_id = sites.id")
        ).all()
        study_sites = (
            conn.execute(text("SELECT DISTINCT sites.code FROM studies LEFT JOIN sites ON studies.site_id = sites.id"))
            .scalars()
            .all()
        )
    engine.dispose()
    assert states == {"drafted": 7, "failed": 1}
    assert instances == 73 and drafts == 7
    assert len(errors) == 1 and "radiotherapy" in errors[0]
    assert [tuple(row) for row in readers] == [("radiologist", "DEMO")]
    assert study_sites == ["DEMO"]  # every demo study is on the radiologist's worklist
