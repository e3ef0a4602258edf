"""The worklist's STAT comes back to routine once a radiologist opened the stat second opinion's draft.

Over real sockets: ``pacs-vlm api`` on PostgreSQL and Redis; the second opinion is asked for through the API,
its draft recorded by the worker's store functions, and the radiologist, in headless Chromium, sees the study
STAT on the worklist, opens it (the report of record shows: still stat), opens the second opinion's draft
from the page's list of reports, and goes back to a worklist where the study is routine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

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
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str, chromium: Any
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

    browser = chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    browser.goto(api.url + "/login")
    browser.fill("#username", "dr_north")
    browser.fill("#password", PASSWORD)
    with browser.expect_navigation():
        browser.press("#password", "Enter")
    row = browser.locator(f"tr:has(a.open-study[href^='/studies/{UID}'])")
    assert row.locator(".badge.stat").inner_text() == "STAT"
    with browser.expect_navigation():
        row.locator("a.open-study").click()
    assert "tiny" in browser.locator(".ai-notice").inner_text()  # the report of record first: still unread
    assert worklist_priority(rad) == "stat"
    with browser.expect_navigation():
        browser.locator(f"nav.reports a[href$='report={opinion}']").click()
    assert "medgemma-4b-it" in browser.locator(".ai-notice").inner_text()
    with browser.expect_navigation():
        browser.locator("#back-to-worklist").click()
    assert browser.locator(f"tr:has(a.open-study[href^='/studies/{UID}'])").locator(".badge.stat").count() == 0
    assert worklist_priority(rad) == "routine"
