"""The worklist's STAT comes back to routine once a radiologist opened the stat second opinion's draft.

Over real sockets: ``pacs-vlm api`` on PostgreSQL and Redis; the second opinion is asked for through the API,
its draft recorded by the worker's store functions, and the radiologist opens the draft's study page.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from integration.store.reports import SkippedJob, claim_job, record_draft
from integration.store.session import session_scope
from integration.store.tables import StudyState, utcnow
from tests.support.order_store import a_draft
from tests.web.conftest import ApiProcess
from tests.web.test_opinions import MODELS, PASSWORD, Client, add_study, cli, findings

UID = "1.2.826.0.1.19.5"


def worklist_priority(client: Client) -> str:
    response = client.get("/api/studies")
    assert response.status_code == 200, response.text
    [row] = [row for row in response.json() if row["study_uid"] == UID]
    return str(row["priority"])


def test_the_worklist_shows_stat_until_the_radiologist_opens_the_second_opinion(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str
) -> None:
    url = migrated_postgres_url
    cli(url, "sites", "add", "NORTH", "North Hospital")
    cli(url, "users", "add", "dr_north", "--role", "radiologist", "--password-stdin", "--site", "NORTH", stdin=PASSWORD)
    add_study(url, UID, "NORTH", StudyState.DRAFTED, [("tiny", "ct/v1", findings("Normal.", impression="Normal."))])
    api = start_api(PACSVLM_DATABASE_URL=url, PACSVLM_BROKER_URL=redis_url, PACSVLM_MODELS=json.dumps(MODELS))
    rad = Client(api, "dr_north")
    assert worklist_priority(rad) == "routine"

    asked = rad.ask(UID, {"model": "medgemma", "stat": True})
    assert asked.status_code == 201, asked.text
    assert worklist_priority(rad) == "stat"
    job_id = asked.json()["job_id"]
    with session_scope(url) as session:  # the worker drafts it
        assert not isinstance(claim_job(session, job_id, max_attempts=3, now=utcnow()), SkippedJob)
    with session_scope(url) as session:
        opinion = record_draft(session, job_id, replace(a_draft(), model_id="medgemma-4b-it"), utcnow())
    assert worklist_priority(rad) == "stat"  # drafted, nobody has read it

    page = rad.get(f"/studies/{UID}?report={opinion}")
    assert page.status_code == 200, page.text
    assert worklist_priority(rad) == "routine"
