"""A real Celery worker whose default model is an OpenAI-compatible server (``transformers serve``, tiny LLaVA).

Listener, worker, PostgreSQL and Redis are real processes; a recording proxy in front of the server keeps
what the server received.  No ``PACSVLM_MODEL`` is set: the worker loads no weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from tests.support.model_server import RecordingProxy, TransformersServe
from tests.support.peers import ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows
from tests.worker.test_outbound import PATIENT, QUESTION, identified_study
from tests.worker.test_worker import run_worker_command


@pytest.fixture
def proxy(smoke_model_server: TransformersServe) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(smoke_model_server.url)
    yield recording
    recording.close()


def test_a_worker_drafts_a_study_through_the_model_server(
    listener: ListenerProcess,
    worker_factory: Callable[..., WorkerProcess],
    proxy: RecordingProxy,
    smoke_model_dir: Path,
    tmp_path: Path,
) -> None:
    files = identified_study(tmp_path / "study", burned_in=set())
    assert storescu(listener.port, files).returncode == 0
    server_env = {
        "PACSVLM_MODEL_SERVER_URL": proxy.url + "/v1",
        "PACSVLM_MODEL_SERVER_MODEL": str(smoke_model_dir),
        "PACSVLM_MODEL_SERVER_FAMILY": "llava",
        "PACSVLM_MODEL_SERVER_API_KEY": "worker-secret",
    }
    worker = worker_factory(listener.data_dir, listener.database_url, listener.broker_url, None, extra_env=server_env)
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT count(*) FROM reports") == [(1,)],
        timeout=240,
        message=f"a draft:\n{worker.log()[-3000:]}",
    )
    [(model_id, revision, family, timings, tokens_out, evidence)] = db_rows(
        listener.database_url,
        "SELECT model_id, model_revision, model_family, timings, tokens_out, evidence FROM reports",
    )
    port = proxy.url.rsplit(":", 1)[1]
    assert (model_id, revision, family) == (str(smoke_model_dir), f"server:127.0.0.1:{port}", "llava")
    assert timings["deidentified"] == 1.0 and tokens_out >= 1
    assert db_rows(listener.database_url, "SELECT state FROM analysis_jobs") == [("done",)]
    [sent] = proxy.chat_requests()
    assert sent.headers["Authorization"] == "Bearer worker-secret"
    uids = {str(getattr(pydicom.dcmread(f), k)) for f in files for k in ("StudyInstanceUID", "SOPInstanceUID")}
    for value in [*PATIENT.values(), QUESTION, *uids]:
        assert value.encode() not in sent.body, f"{value!r} left the trust boundary"
    images = [p for p in json.loads(sent.body)["messages"][0]["content"] if p["type"] != "text"]
    assert len(images) == 1 and len(evidence) > 1  # LLaVA takes one image: a labelled montage of every frame shown
    assert {e["image"] for e in evidence} == {1}
    log = worker.log()
    assert "outside the trust boundary" in log and "worker-secret" not in log
    assert "Kowalczyk" not in log and "cough" not in log


def test_worker_start_up_checks_the_model_server_settings(tmp_path: Path) -> None:
    result = run_worker_command({"PACSVLM_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "PACSVLM_MODEL_SERVER_URL" in result.stderr
    bad = run_worker_command(
        {
            "PACSVLM_DATA_DIR": str(tmp_path),
            "PACSVLM_MODEL_SERVER_URL": "http://127.0.0.1:9",
            "PACSVLM_MODEL_SERVER_FAMILY": "gpt-9",
        }
    )
    assert bad.returncode == 2 and "unknown family 'gpt-9'" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
