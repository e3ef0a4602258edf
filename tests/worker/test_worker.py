"""`pacs-vlm worker` with real Celery, Redis and PostgreSQL: redelivery, failures with reasons, start-up errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from integration.config import Settings
from integration.queue import send_analyze_study
from integration.samples import pydicom_test_file, write_ct_series
from tests.support.peers import REPO, ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows


def run_worker_command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker"],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_worker_without_a_model_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_worker_command({"PACSVLM_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no model configured" in result.stderr and "PACSVLM_MODEL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_worker_with_an_unstaged_model_folder_says_how_to_stage_it(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    result = run_worker_command({"PACSVLM_DATA_DIR": str(tmp_path), "PACSVLM_MODEL": str(tmp_path / "model")})
    assert result.returncode == 2
    assert "download" in result.stderr and "PACSVLM_MODEL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def reports(url: str) -> list[tuple]:
    return db_rows(url, "SELECT id, study_id, status FROM reports ORDER BY id")


def test_a_redelivered_task_makes_no_second_draft(
    listener: ListenerProcess, worker_factory: Callable[..., WorkerProcess], smoke_model_dir: Path
) -> None:
    assert storescu(listener.port, [pydicom_test_file("CT_small.dcm")]).returncode == 0
    worker = worker_factory(listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir)
    wait_until(lambda: len(reports(listener.database_url)) == 1, timeout=180, message=f"draft:\n{worker.log()[-2000:]}")
    [(job_id, send_count)] = db_rows(listener.database_url, "SELECT id, send_count FROM analysis_jobs")
    settings = Settings(broker_url=listener.broker_url, database_url=listener.database_url)
    send_analyze_study(settings, job_id, settings.analysis_queue, send_count)  # the broker delivers it again
    wait_until(lambda: "job already done" in worker.log(), timeout=60, message="the duplicate delivery handled")
    assert len(reports(listener.database_url)) == 1
    assert db_rows(listener.database_url, "SELECT state, attempts FROM analysis_jobs") == [("done", 1)]


def test_a_study_whose_files_vanished_fails_with_the_reason(
    listener_factory: Callable[..., ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    listener = listener_factory(migrated_postgres_url, redis_url)
    assert storescu(listener.port, write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)).returncode == 0
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state FROM studies") == [("queued",)],
        timeout=30,
        message="study queued",
    )
    for folder in listener.instance_root.iterdir():
        if not folder.name.startswith("."):
            shutil.rmtree(folder)  # storage lost behind our back
    worker = worker_factory(listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir)
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state FROM studies") == [("failed",)],
        timeout=120,
        message=f"study failed:\n{worker.log()[-2000:]}",
    )
    [(state, error)] = db_rows(listener.database_url, "SELECT state, last_error FROM analysis_jobs")
    assert state == "failed" and "no image for the model" in error
    assert reports(listener.database_url) == []
