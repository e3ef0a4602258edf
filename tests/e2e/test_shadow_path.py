"""Shadow mode and skip rules end to end: the real listener, worker (tiny LLaVA), api and PostgreSQL.

A routing rule with a shadow model makes a CT study drafted twice: the primary draft a radiologist reviews,
and a candidate's draft nobody sees.  The radiologist signs the primary through the JSON API; the candidate
is then measured against what was signed (``shadow_outcomes``, ``/metrics``, ``pacs-vlm report shadow``).
A skip rule ends an MR study ``skipped``, named on the worklist, the study page and ``/admin/work``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.config import Settings
from integration.samples import pydicom_test_file
from integration.web.security.csrf import csrf_token_for_session
from tests.support.peers import SCU_AE, ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows
from tests.support.review_app import sites_and_users
from tests.web.conftest import ApiProcess
from tests.web.test_auth import COOKIE, PASSWORD, cli

RULES = [
    {"name": "mr-skip", "modality": "MR", "skip": True},
    {"name": "ct-shadow", "modality": "CT", "shadow_model": "candidate", "shadow_prompt": "general"},
]
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # pydicom's CT_small.dcm
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"  # pydicom's MR_small.dcm


def reports(url: str) -> list[tuple[Any, ...]]:
    return db_rows(url, "SELECT id, purpose, status, model_id, prompt_version, sr_path FROM reports ORDER BY id")


def client(api: ApiProcess, username: str) -> httpx.Client:
    """A signed-in JSON API client with the CSRF header."""
    answer = httpx.post(api.url + "/api/login", json={"username": username, "password": PASSWORD}, timeout=10)
    assert answer.status_code == 200, answer.text
    token = answer.cookies[COOKIE]
    headers = {"X-CSRF-Token": csrf_token_for_session(token)}
    return httpx.Client(base_url=api.url, cookies={COOKIE: token}, headers=headers, timeout=60)


@pytest.fixture
def api(listener: ListenerProcess, tmp_path: Path) -> Iterator[ApiProcess]:
    env = {
        "PACSVLM_MIN_FREE_BYTES": "0",
        "PACSVLM_DATABASE_URL": listener.database_url,
        "PACSVLM_BROKER_URL": listener.broker_url,
        "PACSVLM_STORAGE_DIR": str(Settings(data_dir=listener.data_dir).instance_root),
    }
    process = ApiProcess(tmp_path / "api", env).start()
    yield process
    process.stop()


@pytest.fixture
def listener(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> ListenerProcess:
    sites_and_users(migrated_postgres_url)  # NORTH (north_rad, radiologist), boss (admin)
    candidate = tmp_path / "candidate-model"
    return listener_factory(
        migrated_postgres_url,
        redis_url,
        calling_aes={SCU_AE: {"site": "NORTH"}},
        extra_env={
            "PACSVLM_ROUTING_RULES": json.dumps(RULES),
            "PACSVLM_MODELS": json.dumps({"candidate": str(candidate)}),
        },
    )


def sign_through_the_api(radiologist: httpx.Client, report_id: int) -> dict[str, Any]:
    """Review the primary draft as a radiologist would: a finding of their own, checks dismissed, then sign."""
    copy = radiologist.get(f"/api/reports/{report_id}").json()["working_copy"]
    for check in copy["checks"]:
        if check["state"] == "open":
            answer = radiologist.post(
                f"/api/reports/{report_id}/changes", json={"action": "dismiss", "text": check["key"]}
            )
            assert answer.status_code == 200, answer.text
    added = radiologist.post(
        f"/api/reports/{report_id}/changes", json={"action": "add", "text": "No acute intracranial abnormality."}
    )
    assert added.status_code == 200, added.text
    copy = added.json()
    pending = sum(1 for finding in copy["findings"] if finding["decision"] == "pending")
    signed = radiologist.post(
        f"/api/reports/{report_id}/sign", json={"expected_seq": copy["seq"], "confirm_unreviewed": pending}
    )
    assert signed.status_code == 200, signed.text
    return dict(signed.json())


def test_a_shadow_draft_is_hidden_then_measured_against_the_signed_report_and_a_skip_rule_skips(
    listener: ListenerProcess,
    worker_factory: Callable[..., WorkerProcess],
    smoke_model_dir: Path,
    api: ApiProcess,
) -> None:
    url = listener.database_url
    candidate = shutil.copytree(smoke_model_dir, Path(json.loads(listener.extra_env["PACSVLM_MODELS"])["candidate"]))
    worker = worker_factory(
        listener.data_dir,
        url,
        listener.broker_url,
        smoke_model_dir,
        extra_env={"PACSVLM_MODELS": json.dumps({"candidate": str(candidate)})},
    )
    sent = storescu(listener.port, [pydicom_test_file("CT_small.dcm"), pydicom_test_file("MR_small.dcm")])
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(reports(url)) == 2, timeout=300, message=f"two drafts:\n{worker.log()[-3000:]}")
    wait_until(
        lambda: db_rows(url, "SELECT state FROM studies WHERE study_uid = :uid", uid=MR_STUDY) == [("skipped",)],
        timeout=60,
        message="the MR study skipped",
    )
    (primary_id, *primary), (shadow_id, *shadow) = reports(url)
    assert primary[:2] == ["primary", "draft"] and primary[2] != "candidate-model"
    assert tuple(shadow[:3]) == ("shadow", "draft", "candidate-model") and shadow[3] == "general/v3"
    assert shadow[4] is None  # no SR: nothing for DICOMweb, a viewer or a destination
    assert primary[4] is not None
    assert db_rows(url, "SELECT count(*) FROM deliveries WHERE report_id = :id", id=shadow_id) == [(0,)]
    assert db_rows(url, "SELECT count(*) FROM critical_alerts WHERE report_id = :id", id=shadow_id) == [(0,)]
    jobs = db_rows(url, "SELECT purpose, model_name, prompt_name, state FROM analysis_jobs ORDER BY id")
    assert jobs == [("primary", None, None, "done"), ("shadow", "candidate", "general", "done")]
    assert db_rows(url, "SELECT state FROM studies WHERE study_uid = :uid", uid=CT_STUDY) == [("drafted",)]

    radiologist = client(api, "north_rad")
    # the reviewer sees no trace of the shadow draft: study page, JSON study, worklist, report route, opinions
    page = radiologist.get(f"/studies/{CT_STUDY}")
    assert page.status_code == 200
    assert "candidate-model" not in page.text and "general/v3" not in page.text
    assert f"/api/reports/{shadow_id}" not in page.text and f"report={shadow_id}" not in page.text
    detail = radiologist.get(f"/api/studies/{CT_STUDY}").json()
    assert [report["id"] for report in detail["reports"]] == [primary_id]
    assert "candidate" not in json.dumps(detail)
    rows = {row["study_uid"]: row for row in radiologist.get("/api/studies").json()}
    assert rows[CT_STUDY]["report_id"] == primary_id
    assert radiologist.get(f"/api/reports/{shadow_id}").status_code == 404
    assert radiologist.get(f"/studies/{CT_STUDY}?report={shadow_id}").text.count("candidate-model") == 0
    opinions = radiologist.get(f"/api/studies/{CT_STUDY}/opinions").json()
    assert [draft["report_id"] for draft in opinions["drafts"]] == [primary_id]
    assert [job["purpose"] for job in opinions["jobs"]] == ["primary"]
    assert db_rows(url, "SELECT count(*) FROM shadow_outcomes") == [(0,)]

    # the skip rule: not analysed, said so (not an error)
    assert rows[MR_STUDY]["state"] == "skipped" and rows[MR_STUDY]["state_reason"] == "skipped by rule mr-skip"
    assert rows[CT_STUDY]["state_reason"] is None
    assert "(skipped by rule mr-skip)" in radiologist.get("/worklist").text
    assert "skipped by rule mr-skip" in radiologist.get(f"/studies/{MR_STUDY}").text
    assert "skipped by rule mr-skip" in client(api, "boss").get("/admin/work").text

    signed = sign_through_the_api(radiologist, primary_id)
    [outcome] = db_rows(
        url,
        "SELECT report_id, revision_id, model_id, prompt_version, draft_findings, added, text_similarity"
        " FROM shadow_outcomes",
    )
    assert outcome[:4] == (shadow_id, signed["revision_id"], "candidate-model", "general/v3")
    assert outcome[5] >= 1 and 0.0 <= outcome[6] <= 1.0  # the radiologist's own finding: the shadow missed it
    assert db_rows(url, "SELECT status, purpose FROM reports WHERE id = :id", id=shadow_id) == [("draft", "shadow")]

    metrics = api.get("/metrics").text
    outcome_lines = [line for line in metrics.splitlines() if line.startswith("pacsvlm_shadow_outcomes_total{")]
    assert len(outcome_lines) == 1 and 'model_id="candidate-model"' in outcome_lines[0]
    assert 'prompt_version="general/v3"' in outcome_lines[0] and outcome_lines[0].endswith(" 1.0")
    assert any(line.startswith("pacsvlm_shadow_finding_agreement_ratio{") for line in metrics.splitlines())
    assert any(line.startswith("pacsvlm_shadow_text_similarity_mean{") for line in metrics.splitlines())

    table = cli(url, "report", "shadow", "--json")
    assert table.returncode == 0, table.stderr
    [row] = json.loads(table.stdout)["rows"]
    assert (row["model_id"], row["prompt_version"], row["outcomes"]) == ("candidate-model", "general/v3", 1)
