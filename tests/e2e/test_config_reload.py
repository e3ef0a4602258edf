"""Configuration changed with ``pacs-vlm config`` reaches running processes within seconds, without a restart.

Why: a PACS administrator adds a modality to the allowlist or rewords a prompt while studies arrive; a
restart of every process for that is what this part of issue 20 removes.  Real parts: dcmtk's storescu,
``pacs-vlm listen``, ``pacs-vlm worker`` on the tiny LLaVA, PostgreSQL and Redis; the commands run as the
administrator would run them (subprocesses with the processes' environment).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from integration.config import Settings
from integration.config_seed import seed_configuration
from integration.export.outbox import queue_deliveries
from integration.reports.drafts import sign_report
from integration.samples import write_ct_series
from integration.store import app_config as rows
from integration.store.session import session_scope
from tests.export.test_delivery import delivery_env, stored_report
from tests.support.peers import REPO, ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows

POLL = {"PACSVLM_CONFIG_POLL_SECONDS": "0.5"}


def pacs_vlm(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def seeded_listener(tmp_path: Path, url: str, broker: str) -> ListenerProcess:
    listener = ListenerProcess(tmp_path / "listener", url, broker, calling_aes={"STORESCU": {}}, extra_env=POLL)
    assert "calling_ae" in pacs_vlm(listener.env(), "config", "seed")  # as `pacs-vlm db upgrade` does
    return listener.start()


def test_a_calling_ae_added_with_the_cli_is_accepted_by_the_running_listener(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    listener = seeded_listener(tmp_path, migrated_postgres_url, redis_url)
    try:
        series = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
        assert storescu(listener.port, series, calling_ae="NEWCT").returncode != 0
        # the refusal's log line may be written just after storescu has seen the A-ASSOCIATE-RJ
        wait_until(lambda: "calling AE not in the allowlist" in listener.log(), timeout=10, message="refusal logged")
        assert storescu(listener.port, series).returncode == 0
        pacs_vlm(listener.env(), "config", "set", "calling_ae", "NEWCT", "--json", '{"stable_seconds": 1}')
        changed = time.monotonic()
        wait_until(
            lambda: storescu(listener.port, series, calling_ae="NEWCT").returncode == 0,
            timeout=15, interval=0.5, message="NEWCT accepted",
        )  # fmt: skip
        assert time.monotonic() - changed < 10  # within seconds (the poll is 0.5 s here)
        pacs_vlm(listener.env(), "config", "delete", "calling_ae", "STORESCU")
        wait_until(lambda: storescu(listener.port, series).returncode != 0, timeout=15, message="STORESCU refused")
        assert listener.process is not None and listener.process.poll() is None  # the same process all along
    finally:
        listener.stop()


def drafts(url: str) -> list[tuple[str, str]]:
    return [
        (row[0], row[1])
        for row in db_rows(
            url,
            "SELECT s.study_uid, r.prompt_version FROM reports r JOIN studies s ON s.id = r.study_id ORDER BY r.id",
        )
    ]


def test_a_running_worker_drafts_with_the_new_prompt_version(
    migrated_postgres_url: str,
    redis_url: str,
    worker_factory: Callable[..., WorkerProcess],
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    url = migrated_postgres_url
    listener = seeded_listener(tmp_path, url, redis_url)
    try:
        worker_factory(listener.data_dir, url, redis_url, smoke_model_dir, extra_env=POLL)
        first = write_ct_series(tmp_path / "first", 4, rows=64, columns=64)
        assert storescu(listener.port, first).returncode == 0
        wait_until(lambda: len(drafts(url)) == 1, timeout=240, message="the first draft")
        name, version = drafts(url)[0][1].split("/v")
        with session_scope(url) as session:
            used = rows.prompt_version(session, name, int(version))
            assert used is not None  # the draft's name/vN is a row of the database
            criteria = ["--modality", used.modality] if used.modality else []
            for part in used.body_parts:
                criteria += ["--body-part", part]
        task = tmp_path / "task.txt"
        task.write_text("These are axial CT slices. Describe every organ in view, one finding per organ.")
        out = pacs_vlm(listener.env(), "config", "prompt", "set", name, *criteria, "--task-file", str(task))
        assert f"{name}/v{int(version) + 1} in force" in out
        time.sleep(1.5)  # three polls: the worker reads the new version on its next task
        second = write_ct_series(tmp_path / "second", 4, rows=64, columns=64, seed=1)
        assert storescu(listener.port, second).returncode == 0
        wait_until(lambda: len(drafts(url)) == 2, timeout=240, message="the second draft")
        assert drafts(url)[1][1] == f"{name}/v{int(version) + 1}"
    finally:
        listener.stop()


def test_a_destination_added_while_the_worker_runs_receives_the_next_signed_report(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    url = migrated_postgres_url
    # this process stands in for the api, which queues a signed report's deliveries
    settings = Settings(data_dir=tmp_path / "data", database_url=url, broker_url=redis_url, config_poll_seconds=0.5)
    with session_scope(url) as session:
        assert "destination" not in seed_configuration(session, settings)  # an empty variable seeds nothing
    worker = worker_factory(
        settings.data_dir, url, redis_url, None, queues="delivery", extra_env={**delivery_env(settings, []), **POLL}
    )
    report_id = stored_report(settings)
    first = sign_report(settings, report_id, author="Doe^Jane", organization="North")
    assert queue_deliveries(settings, report_id, first, "signed") == []  # nowhere to go yet
    folder = tmp_path / "ris-drop"
    document = {"kind": "folder", "folder": str(folder), "documents": ["fhir", "hl7"], "reports": "signed"}
    pacs_vlm({**worker.env(), "PYTHONUNBUFFERED": "1"}, "config", "set", "destination", "ris-drop", "--json",
             json.dumps(document))  # fmt: skip
    time.sleep(1.5)  # three polls of this process and of the worker
    second = sign_report(settings, report_id, author="Doe^Jane", organization="North", impression="Changed.")
    assert len(queue_deliveries(settings, report_id, second, "signed")) == 2  # its FHIR and HL7 documents
    wait_until(
        lambda: len(list(folder.glob("*"))) == 2,
        timeout=60, message=f"the signed report in the folder; worker log:\n{worker.log()[-2000:]}",
    )  # fmt: skip
    delivered = db_rows(url, "SELECT destination, document, state FROM deliveries ORDER BY id")
    assert sorted(delivered) == [("ris-drop", "fhir", "delivered"), ("ris-drop", "hl7", "delivered")]
