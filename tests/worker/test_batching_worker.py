"""`pacs-vlm worker --batch-size 4` with real Celery, Redis, PostgreSQL and the tiny LLaVA smoke model.

Four studies are queued before the worker starts; the worker holds all four messages in its threads pool,
their generation requests meet in one model batcher, and each study gets exactly one draft.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from integration.config import Settings
from integration.samples import write_ct_series
from tests.reliability.test_faults import age_unacknowledged_messages
from tests.support.peers import REPO, ListenerProcess, WorkerProcess, stop_process, storescu, wait_until
from tests.support.records import db_rows

STUDIES = 4


@pytest.fixture
def batching_worker() -> Iterator[Callable[[WorkerProcess, list[str]], WorkerProcess]]:
    """Start ``pacs-vlm worker`` with extra command-line options (the plain factory takes none); stop after."""
    started: list[WorkerProcess] = []

    def start(worker: WorkerProcess, options: list[str]) -> WorkerProcess:
        worker.data_dir.mkdir(parents=True, exist_ok=True)
        worker.log_path = worker.data_dir / f"worker-batching-{len(started)}.log"
        command = [sys.executable, "-m", "worker.cli", "worker", "--log-level", "info", *options]
        with worker.log_path.open("ab") as log:
            worker.process = subprocess.Popen(command, cwd=REPO, env=worker.env(), stdout=log, stderr=subprocess.STDOUT)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        stop_process(worker.process)


def queue_studies(listener: ListenerProcess, folder: Path) -> None:
    """Send STUDIES small CT studies in one association and wait until all are queued."""
    files = [
        path
        for number in range(STUDIES)
        for path in write_ct_series(folder / f"ct{number}", 3, rows=32, columns=32, seed=number)
    ]
    assert storescu(listener.port, files).returncode == 0
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state FROM studies") == [("queued",)] * STUDIES,
        timeout=60,
        message="all studies queued before the worker starts",
    )


def wait_for_drafts(listener: ListenerProcess, worker: WorkerProcess) -> None:
    """Wait until every study has a draft; check that each has exactly one."""
    wait_until(
        lambda: len(db_rows(listener.database_url, "SELECT id FROM reports")) == STUDIES,
        timeout=240,
        message=f"four drafts:\n{worker.log()[-3000:]}",
    )
    per_study = db_rows(listener.database_url, "SELECT study_id, count(*) FROM reports GROUP BY study_id")
    assert len(per_study) == STUDIES and all(count == 1 for _, count in per_study)


def test_a_batching_worker_drafts_queued_studies_in_fewer_model_calls_than_studies(
    listener_factory: Callable[..., ListenerProcess],
    batching_worker: Callable[[WorkerProcess, list[str]], WorkerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    listener = listener_factory(migrated_postgres_url, redis_url)
    queue_studies(listener, tmp_path)

    worker = WorkerProcess(listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir)
    batching_worker(worker, ["--batch-size", str(STUDIES), "--batch-wait-ms", "5000"])

    wait_for_drafts(listener, worker)
    assert db_rows(listener.database_url, "SELECT state, attempts FROM analysis_jobs") == [("done", 1)] * STUDIES
    log = worker.log()
    assert "batches of up to 4" in log
    assert re.search(r"concurrency:\s+4 \(thread", log), log[:3000]
    batches = [int(size) for size in re.findall(r"model batch \d+: (\d+) request", log)]
    assert sum(batches) == STUDIES, log[-3000:]
    assert len(batches) < STUDIES, batches  # the model ran fewer generate calls than studies


def test_a_killed_batching_worker_loses_none_of_the_studies_it_held(
    listener_factory: Callable[..., ListenerProcess],
    batching_worker: Callable[[WorkerProcess, list[str]], WorkerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    listener = listener_factory(migrated_postgres_url, redis_url)
    queue_studies(listener, tmp_path)
    first = WorkerProcess(listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir)
    # A batch of 8 that waits a minute: the worker holds all four studies, their requests queued for the model.
    batching_worker(first, ["--batch-size", "8", "--batch-wait-ms", "60000"])
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state, attempts FROM analysis_jobs") == [("running", 1)] * 4,
        timeout=120,
        message=f"four jobs held:\n{first.log()[-3000:]}",
    )
    assert first.process is not None
    main = psutil.Process(first.process.pid)
    main.send_signal(signal.SIGSTOP)  # frozen first, so it cannot hand the messages back: the machine died
    main.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    first.process = None
    assert db_rows(listener.database_url, "SELECT id FROM reports") == []
    settings = Settings(broker_url=listener.broker_url, database_url=listener.database_url)
    assert age_unacknowledged_messages(listener.broker_url, settings.visibility_timeout + 1) == STUDIES

    second = WorkerProcess(listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir)
    batching_worker(second, ["--batch-size", str(STUDIES), "--batch-wait-ms", "2000"])

    wait_for_drafts(listener, second)
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state, attempts FROM analysis_jobs") == [("done", 2)] * 4,
        timeout=30,
        message="every job done on its second attempt",
    )


def test_the_batch_settings_wrap_the_loaded_model_in_a_batcher(smoke_model_dir: Path) -> None:
    from models.batching import BatchingBackend
    from models.transformers_backend import TransformersBackend
    from worker.backends import batched

    backend = TransformersBackend(smoke_model_dir, device="cpu")  # checked, not loaded
    assert batched(Settings(batch_size=1), backend) is backend
    wrapped = batched(Settings(batch_size=3, batch_wait_ms=250, analysis_soft_time_limit=90), backend)
    assert isinstance(wrapped, BatchingBackend) and wrapped.backend is backend
    assert (wrapped.batch_size, wrapped.wait_seconds, wrapped.timeout) == (3, 0.25, 90)
    assert wrapped.identity == backend.identity


@pytest.mark.parametrize(
    ("option", "value"), [("--batch-size", "0"), ("--batch-size", "65"), ("--batch-wait-ms", "-1")]
)
def test_an_invalid_batch_option_is_refused_without_a_traceback(option: str, value: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")} | {"PACSVLM_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "worker.cli", "worker", option, value]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert option in result.stderr and "Traceback" not in result.stderr + result.stdout
