"""Second opinions and stat priority with real parts: listener, Redis, PostgreSQL, Celery worker, tiny models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from integration.config import Settings
from integration.queue import broker_options, send_analyze_study, worker_queues
from integration.samples import pydicom_test_file, write_ct_series
from integration.store.opinions import BUILTIN_PROMPT_NAMES, DuplicateOpinion, request_second_opinion
from integration.store.session import session_scope
from integration.store.tables import Study
from integration.web.api.opinions import send_opinion
from models.prompts import UnknownPrompt, template_named, template_names
from tests.support.peers import ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows
from tests.worker.test_worker import run_worker_command


def test_model_names_and_queues_are_validated(tmp_path: Path) -> None:
    settings = Settings(models={"medgemma-4b": tmp_path, "qwen2.5_vl": tmp_path})
    assert set(settings.models) == {"medgemma-4b", "qwen2.5_vl"}
    for bad in ("MedGemma", "-x", "", "a b", "x" * 65, "../up"):
        with pytest.raises(ValidationError, match="not a valid model name"):
            Settings(models={bad: tmp_path})
    with pytest.raises(ValidationError, match="three different"):
        Settings(stat_queue="analysis")
    assert Settings().stat_queue == "analysis.stat"
    assert worker_queues(Settings()) == ["analysis.stat", "analysis", "delivery"]


def test_redis_consumes_queues_in_strict_priority_order() -> None:
    options = broker_options(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert options["queue_order_strategy"] == "priority"


def test_prompt_names_of_the_edge_are_the_templates() -> None:
    # the edge's names before the database's prompts are seeded from these (tests/store/test_app_config.py: after)
    assert template_names() == BUILTIN_PROMPT_NAMES
    assert template_named("general").key == "general/v3"
    with pytest.raises(UnknownPrompt, match="ct-chest, ct-head"):
        template_named("nope")


def reports(url: str) -> list[tuple[Any, ...]]:
    return db_rows(
        url, "SELECT id, study_id, study_version, status, model_id, prompt_version, job_id FROM reports ORDER BY id"
    )


def jobs(url: str) -> list[tuple[Any, ...]]:
    return db_rows(
        url,
        "SELECT id, purpose, priority, model_name, prompt_name, state, queue, requested_by, attempts, last_error"
        " FROM analysis_jobs ORDER BY id",
    )


def ask(url: str, settings: Settings, study_uid: str, model: str | None, prompt: str | None, stat: bool) -> int:
    """What the API does: store the job (committed), then send its message."""
    queue = settings.stat_queue if stat else settings.analysis_queue
    with session_scope(url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        job_id = request_second_opinion(
            session, study, model_name=model, prompt_name=prompt, stat=stat, requested_by="dr_a", queue=queue
        )
    assert send_opinion(settings, job_id, queue)
    return job_id


def test_a_second_opinion_with_another_model_makes_a_second_draft(
    listener: ListenerProcess,
    worker_factory: Callable[..., WorkerProcess],
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    second = shutil.copytree(smoke_model_dir, tmp_path / "second-model")  # same weights, another model id
    url = listener.database_url
    assert storescu(listener.port, [pydicom_test_file("CT_small.dcm")]).returncode == 0
    worker = worker_factory(
        listener.data_dir,
        url,
        listener.broker_url,
        smoke_model_dir,
        extra_env={"PACSVLM_MODELS": json.dumps({"second": str(second)})},
    )
    wait_until(lambda: len(reports(url)) == 1, timeout=180, message=f"first draft:\n{worker.log()[-2000:]}")
    [(study_uid,)] = db_rows(url, "SELECT study_uid FROM studies")
    settings = Settings(broker_url=listener.broker_url, database_url=url)

    job_id = ask(url, settings, study_uid, "second", None, stat=False)
    wait_until(lambda: len(reports(url)) == 2, timeout=180, message=f"second draft:\n{worker.log()[-2000:]}")
    first, other = reports(url)
    assert first[1:4] == other[1:4] == (first[1], 1, "draft")  # one study, one version, both drafts
    assert first[4] != other[4] and other[4] == "second-model" and first[5] == other[5]
    assert other[6] == job_id
    primary, opinion = jobs(url)
    assert primary[1:6] == ("primary", "routine", None, None, "done")
    assert opinion[1:9] == ("second_opinion", "routine", "second", None, "done", "analysis", "dr_a", 1)

    with session_scope(url) as session:  # asking again for the same model and prompt is refused
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        with pytest.raises(DuplicateOpinion, match="already"):
            request_second_opinion(
                session, study, model_name="second", prompt_name=None, stat=False, requested_by="x", queue="analysis"
            )

    send_analyze_study(settings, job_id, "analysis", 1)  # the broker delivers it again: no third draft
    wait_until(lambda: "job already done" in worker.log(), timeout=60, message="the duplicate delivery handled")
    assert len(reports(url)) == 2

    prompted = ask(url, settings, study_uid, "second", "general", stat=False)  # another prompt: a third draft
    wait_until(lambda: len(reports(url)) == 3, timeout=180, message=f"third draft:\n{worker.log()[-2000:]}")
    assert reports(url)[2][4:7] == ("second-model", "general/v3", prompted)

    ghost = ask(url, settings, study_uid, "ghost", None, stat=False)
    unknown_prompt = ask(url, settings, study_uid, None, "no-such-prompt", stat=False)
    wait_until(
        lambda: {row[5] for row in jobs(url) if row[0] in (ghost, unknown_prompt)} == {"failed"},
        timeout=120,
        message=f"unknown names fail:\n{worker.log()[-2000:]}",
    )
    errors = {row[0]: (row[8], row[9]) for row in jobs(url)}
    assert errors[ghost][0] == 1 and "unknown model 'ghost'" in errors[ghost][1] and "second" in errors[ghost][1]
    assert errors[unknown_prompt][0] == 1 and "unknown prompt 'no-such-prompt'" in errors[unknown_prompt][1]
    assert "ct-chest" in errors[unknown_prompt][1]
    assert len(reports(url)) == 3
    assert db_rows(url, "SELECT state FROM studies") == [("drafted",)]  # a failed second opinion fails no study


def test_the_worker_takes_stat_jobs_before_waiting_routine_ones(
    listener: ListenerProcess,
    worker_factory: Callable[..., WorkerProcess],
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    url = listener.database_url
    for index in range(3):
        files = write_ct_series(tmp_path / f"ct{index}", 2, rows=32, columns=32)
        assert storescu(listener.port, files).returncode == 0
    wait_until(
        lambda: db_rows(url, "SELECT count(*) FROM analysis_jobs WHERE sent_at IS NOT NULL") == [(3,)],
        timeout=60,
        message="three routine jobs sent",
    )
    settings = Settings(broker_url=listener.broker_url, database_url=url)
    uids = [uid for (uid,) in db_rows(url, "SELECT study_uid FROM studies ORDER BY id")]
    stat_jobs = {ask(url, settings, uids[0], None, "general", stat=True), ask(url, settings, uids[2], None, "ct", True)}
    assert db_rows(url, "SELECT study_uid FROM studies WHERE priority = 'stat' ORDER BY id") == [
        (uids[0],),
        (uids[2],),
    ]
    worker = worker_factory(listener.data_dir, url, listener.broker_url, smoke_model_dir)
    wait_until(
        lambda: db_rows(url, "SELECT count(*) FROM analysis_jobs WHERE state = 'done'") == [(5,)],
        timeout=300,
        message=f"five jobs done:\n{worker.log()[-2000:]}",
    )
    order = [job_id for (job_id,) in db_rows(url, "SELECT id FROM analysis_jobs ORDER BY started_at, id")]
    assert set(order[:2]) == stat_jobs, order  # both stat jobs before any routine one, though queued last
    assert db_rows(url, "SELECT DISTINCT queue FROM analysis_jobs WHERE id = ANY(:ids)", ids=list(stat_jobs)) == [
        ("analysis.stat",)
    ]


def test_a_worker_with_an_unstaged_second_opinion_model_does_not_start(smoke_model_dir: Path, tmp_path: Path) -> None:
    env = {
        "PACSVLM_DATA_DIR": str(tmp_path),
        "PACSVLM_MODEL": str(smoke_model_dir),
        "PACSVLM_MODELS": json.dumps({"ghost": str(tmp_path / "nowhere")}),
    }
    result = run_worker_command(env)
    assert result.returncode == 2
    assert "model 'ghost' of PACSVLM_MODELS" in result.stderr and "Traceback" not in result.stderr + result.stdout
    invalid = run_worker_command({**env, "PACSVLM_MODELS": json.dumps({"Bad Name": str(smoke_model_dir)})})
    assert invalid.returncode == 2 and "not a valid model name" in invalid.stdout + invalid.stderr
    assert "Traceback" not in invalid.stderr + invalid.stdout
