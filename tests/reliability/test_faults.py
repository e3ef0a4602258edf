"""Faults in real processes: a worker killed in ``generate``, a full volume, a dropped association, Redis lost.

Other faults have their tests next to the code they exercise (see RELIABILITY.md): PostgreSQL cut
while sending, the listener SIGKILLed mid-study, the reconciler's re-send after a Redis restart; here
the restart is followed through to the drafts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from bench.wire import ABORT_RQ, ct_instance, open_association, p_data, pdv, send_store, store_command
from integration.config import Settings
from integration.samples import pydicom_test_file, write_ct_series
from tests.support.peers import ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows, queued_messages
from tests.support.services import start_redis
from tests.web.conftest import ApiProcess

#: Tokens the smoke model generates per draft here: greedy decoding of random weights never stops early,
#: so ``generate`` runs for several seconds on a CPU (long enough to be killed in the middle).
SLOW_NEW_TOKENS = "600"


def reports(url: str) -> list[tuple[object, ...]]:
    return db_rows(url, "SELECT id, study_id, status FROM reports ORDER BY id")


def queue_one_study(listener: ListenerProcess) -> int:
    """Send CT_small and wait until its analysis job is queued; return the job id."""
    assert storescu(listener.port, [pydicom_test_file("CT_small.dcm")]).returncode == 0
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state FROM analysis_jobs") == [("queued",)],
        timeout=30,
        message="analysis job queued",
    )
    return int(db_rows(listener.database_url, "SELECT id FROM analysis_jobs")[0][0])


def wait_in_generate(worker: WorkerProcess, listener: ListenerProcess, job_id: int) -> None:
    """Wait until the worker has prepared the images of attempt 1 (the next step is ``generate``)."""
    wait_until(
        lambda: f"analysis job {job_id}: attempt 1" in worker.log() and "prepared 1 image(s)" in worker.log(),
        timeout=120,
        message=f"the worker in generate:\n{worker.log()[-2000:]}",
    )
    assert db_rows(listener.database_url, "SELECT state, attempts FROM analysis_jobs") == [("running", 1)]
    assert reports(listener.database_url) == []


def pool_child(worker: WorkerProcess) -> psutil.Process:
    """The prefork pool process that runs tasks (concurrency 1)."""
    assert worker.process is not None
    [child] = psutil.Process(worker.process.pid).children()
    return child


def assert_drafted_once_on_attempt_two(listener: ListenerProcess, worker: WorkerProcess) -> None:
    wait_until(
        lambda: len(reports(listener.database_url)) == 1,
        timeout=240,
        message=f"the draft after the kill:\n{worker.log()[-3000:]}",
    )
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state FROM analysis_jobs") == [("done",)],
        timeout=30,
        message="job done",
    )
    assert db_rows(listener.database_url, "SELECT state, attempts FROM analysis_jobs") == [("done", 2)]
    assert [status for _, _, status in reports(listener.database_url)] == ["draft"]
    assert db_rows(listener.database_url, "SELECT state FROM studies") == [("drafted",)]


def test_worker_pool_process_killed_in_generate_runs_the_job_again_and_drafts_once(
    listener: ListenerProcess, worker_factory: Callable[..., WorkerProcess], smoke_model_dir: Path
) -> None:
    job_id = queue_one_study(listener)
    worker = worker_factory(
        listener.data_dir,
        listener.database_url,
        listener.broker_url,
        smoke_model_dir,
        extra_env={"PACSVLM_MAX_NEW_TOKENS": SLOW_NEW_TOKENS},
    )
    wait_in_generate(worker, listener, job_id)
    pool_child(worker).send_signal(signal.SIGKILL)  # as the kernel's OOM killer would
    # reject_on_worker_lost: the main process puts the message back; a new pool process takes it.
    assert_drafted_once_on_attempt_two(listener, worker)
    assert "SIGKILL" in worker.log()
    assert f"analysis job {job_id}: attempt 2" in worker.log()


def age_unacknowledged_messages(broker_url: str, seconds: float) -> int:
    """Move the delivery time of every unacknowledged message back by ``seconds``; return how many.

    This stands in for waiting out Redis's visibility timeout (at least an hour), the one thing in these
    tests that is not real: kombu restores a message whose delivery is older than the timeout.
    """
    client = redis.Redis.from_url(broker_url)
    try:
        entries = client.zrange("unacked_index", 0, -1, withscores=True)
        for tag, score in entries:
            client.zadd("unacked_index", {tag: score - seconds})
        return len(entries)
    finally:
        client.close()


def test_whole_worker_killed_in_generate_is_redelivered_to_a_new_worker_and_drafts_once(
    listener: ListenerProcess, worker_factory: Callable[..., WorkerProcess], smoke_model_dir: Path
) -> None:
    job_id = queue_one_study(listener)
    env = {"PACSVLM_MAX_NEW_TOKENS": SLOW_NEW_TOKENS}
    first = worker_factory(
        listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir, extra_env=env
    )
    wait_in_generate(first, listener, job_id)
    assert first.process is not None
    main = psutil.Process(first.process.pid)
    child = pool_child(first)
    main.send_signal(signal.SIGSTOP)  # frozen first, so it cannot hand the message back: the machine died
    child.send_signal(signal.SIGKILL)
    main.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    first.process = None
    settings = Settings(broker_url=listener.broker_url, database_url=listener.database_url)
    assert age_unacknowledged_messages(listener.broker_url, settings.visibility_timeout + 1) == 1
    assert db_rows(listener.database_url, "SELECT state, attempts FROM analysis_jobs") == [("running", 1)]
    second = worker_factory(listener.data_dir, listener.database_url, listener.broker_url, smoke_model_dir)
    assert_drafted_once_on_attempt_two(listener, second)
    assert f"analysis job {job_id}: attempt 2" in second.log()


# -- the storage volume fills up ------------------------------------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for the test (root only)."""
    mount = tmp_path / "volume"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(volume: Path) -> Path:
    """Write a filler file until the volume is full (ENOSPC); return it."""
    filler = volume / "filler.bin"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 16, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\xff" * size)
    assert os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize < 64 * 1024
    return filler


def stored(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts)


def partial(root: Path) -> list[Path]:
    incoming = root / ".incoming"
    return sorted(p for p in incoming.glob("*") if p.stat().st_size > 0) if incoming.is_dir() else []


@pytest.mark.parametrize(
    ("min_free_bytes", "refusal", "failing_check"),
    [
        ("524288", "storage headroom exhausted", "disk"),  # the headroom check refuses before writing
        ("0", "No space left on device", "storage"),  # no headroom: the write itself hits ENOSPC
    ],
)
def test_full_volume_refuses_with_out_of_resources_reports_on_health_and_recovers(
    listener_factory: Callable[..., ListenerProcess],
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
    redis_url: str,
    small_volume: Path,
    tmp_path: Path,
    min_free_bytes: str,
    refusal: str,
    failing_check: str,
) -> None:
    root = small_volume / "instances"
    # An 8 MiB volume: /health's margin above the minimum (256 MiB by default) is one instance here.
    env = {
        "PACSVLM_STORAGE_DIR": str(root),
        "PACSVLM_MIN_FREE_BYTES": min_free_bytes,
        "PACSVLM_HEALTH_FREE_MARGIN_BYTES": "262144",
    }
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=env)
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_BROKER_URL=redis_url, **env)
    series = write_ct_series(tmp_path / "ct", 24, rows=256, columns=256)  # 131 kB each, 3.2 MB in all
    assert storescu(listener.port, series[:8]).returncode == 0
    assert api.get("/health").status_code == 200

    filler = fill(small_volume)  # something else fills the volume
    refused = storescu(listener.port, series[8:], extra=["-v", "--no-halt"])
    assert refused.stderr.count("Refused: OutOfResources") == 16, refused.stderr[-1500:]
    assert refusal in listener.log()
    assert len(stored(root)) == 8 and partial(root) == []
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(8,)]
    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "STORESCU", "-aec", "PACSVLM", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert echo.returncode == 0, echo.stderr  # the listener stays up
    health = api.get("/health")
    assert health.status_code == 503, health.text
    assert failing_check in health.json()["failing"]
    if failing_check == "disk":
        disk = health.json()["checks"]["disk"]
        assert disk["free_bytes"] < disk["min_free_bytes"] == int(min_free_bytes)
        assert "every C-STORE and upload is refused" in disk["detail"]

    filler.unlink()  # space freed: the sender sends the whole series again
    retried = storescu(listener.port, series, extra=["-v"])
    assert retried.returncode == 0, retried.stderr[-1500:]
    assert retried.stderr.count("(Success)") == 24
    assert db_rows(migrated_postgres_url, "SELECT count(*), count(DISTINCT sop_instance_uid) FROM instances") == [
        (24, 24)
    ]
    assert len(stored(root)) == 24 and partial(root) == []
    assert api.get("/health").status_code == 200
    assert listener.process is not None and listener.process.poll() is None


# -- the association drops in the middle of an instance ----------------------------------------------------


@pytest.mark.parametrize("ending", ["socket closed", "A-ABORT", "socket closed inside a PDU"])
def test_association_dropped_mid_instance_stores_nothing_and_the_listener_serves_on(
    listener: ListenerProcess, ending: str
) -> None:
    dataset, sop_uid = ct_instance()
    sock = open_association(listener.port, 10, calling_ae="STORESCU")
    with sock:
        sock.sendall(p_data(pdv(1, store_command(sop_uid), command=True, last=True)))
        half = dataset[: len(dataset) // 2]
        for start in range(0, len(half), 8192):
            sock.sendall(p_data(pdv(1, half[start : start + 8192], command=False, last=False)))
        if ending == "A-ABORT":
            sock.sendall(ABORT_RQ)
        elif ending == "socket closed inside a PDU":
            rest = dataset[len(half) :]
            sock.sendall(p_data(pdv(1, rest, command=False, last=True))[: 12 + len(rest) // 2])
    wait_until(
        lambda: any(
            '"ended": "aborted"' in detail or "'ended': 'aborted'" in detail
            for (detail,) in db_rows(
                listener.database_url,
                "SELECT CAST(detail AS TEXT) FROM audit_events WHERE action = 'dicom.association'",
            )
        ),
        timeout=30,
        message=f"the association's end recorded:\n{listener.log()[-2000:]}",
    )
    assert db_rows(listener.database_url, "SELECT count(*) FROM instances") == [(0,)]
    assert listener.stored_files() == [] and listener.partial_files() == []
    assert listener.process is not None and listener.process.poll() is None
    # The listener serves on, and the whole instance sent again is stored once.
    assert send_store(listener.port, dataset, sop_uid, calling_ae="STORESCU").status == 0
    assert storescu(listener.port, [pydicom_test_file("MR_small.dcm")]).returncode == 0
    assert db_rows(listener.database_url, "SELECT count(*) FROM instances") == [(2,)]
    assert len(listener.stored_files()) == 2 and listener.partial_files() == []


# -- Redis restarted without persistence while jobs are queued -------------------------------------------


def test_queued_jobs_lost_with_a_redis_restart_are_all_drafted_once(
    listener_factory: Callable[..., ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    migrated_postgres_url: str,
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    broker = start_redis()
    try:
        url = broker.url(0)
        listener = listener_factory(migrated_postgres_url, url)
        for study in range(3):
            series = write_ct_series(tmp_path / f"ct{study}", 2, rows=32, columns=32)
            assert storescu(listener.port, series).returncode == 0
        wait_until(lambda: len(queued_messages(url)) == 3, timeout=60, message="three jobs queued")
        broker.close()
        broker = start_redis(broker.port)  # empty: the three messages are gone
        worker = worker_factory(listener.data_dir, migrated_postgres_url, url, smoke_model_dir)
        wait_until(
            lambda: db_rows(migrated_postgres_url, "SELECT count(*) FROM reports") == [(3,)],
            timeout=240,
            message=f"three drafts:\n{worker.log()[-2000:]}",
        )
        assert db_rows(migrated_postgres_url, "SELECT DISTINCT state FROM studies") == [("drafted",)]
        assert db_rows(migrated_postgres_url, "SELECT count(DISTINCT study_id) FROM reports") == [(3,)]
        assert db_rows(migrated_postgres_url, "SELECT min(send_count), max(attempts) FROM analysis_jobs") == [(2, 1)]
    finally:
        broker.close()
