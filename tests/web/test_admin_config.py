"""The configuration pages ``/admin/config``, tried in headless Chromium as an administrator would.

Why: calling AEs, routing rules, destinations and prompt templates now change in the application; what an
administrator types must reach the rows exactly, a refusal must say why without losing the typing, and every
change must be in the audit trail with its before and after.  One ``pacs-vlm api`` process, one PostgreSQL
database and one Chromium serve the module (Redis database 9 is the module's own); each test uses names of
its own, so the order of the tests does not matter.  The rows and audit events are read from PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from integration import app_config
from integration.store import app_config as rows
from integration.store.config_tables import ConfigEntry, ConfigKind
from integration.store.session import session_scope
from integration.store.tables import AuditEvent
from tests.support.review_app import csrf_of, review_world, sign_in, signed_in_page
from tests.support.services import Postgres, RedisServer
from tests.web.test_signing_browser import Module

#: A Redis database of the module's own.
REDIS_DB = 9


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    review = review_world(postgres, redis_server, tmp_path_factory.mktemp("config"), REDIS_DB)
    yield Module(review.settings, review.start_api())
    review.close()


def entries(world: Module, kind: ConfigKind) -> dict[str, tuple[int, dict[str, Any]]]:
    """Each entry of ``kind``: its position and document."""
    with session_scope(world.settings.database_url) as session:
        return {entry.name: (entry.position, entry.document) for entry in rows.list_entries(session, kind)}


def audited(world: Module, action: str, object_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The audit events of one action on one object, oldest first: actor and detail."""
    with session_scope(world.settings.database_url) as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == action, AuditEvent.object_id == object_id)
            .order_by(AuditEvent.id)
        )
        return [(event.actor, event.detail or {}) for event in events]


def generation(world: Module) -> int:
    with session_scope(world.settings.database_url) as session:
        return rows.generation(session)


def said_generation(page: Any) -> int:
    """The generation the page's success message names."""
    found = re.search(r"Configuration generation (\d+)\.", page.locator("#config-done").inner_text())
    assert found, page.locator("#config-done").inner_text()
    return int(found.group(1))


def test_an_administrator_adds_edits_and_deletes_a_calling_ae(world: Module, chromium: Any) -> None:
    admin = signed_in_page(chromium, world.api, "boss")
    admin.locator("#nav-config").click()
    admin.wait_for_url("**/admin/config")
    admin.locator('#config-kinds a[href="/admin/config/calling-aes"]').click()
    admin.wait_for_url("**/admin/config/calling-aes")
    # the site is chosen from the sites table
    options = admin.locator("#field-site option").all_inner_texts()
    assert options == ["(none)", "NORTH (North Hospital)", "SOUTH (South Hospital)"]
    admin.fill("#field-name", "CT9")
    admin.fill("#field-hosts", "10.0.0.5, 10.0.0.6")
    admin.fill("#field-stable_seconds", "30")
    admin.select_option("#field-site", "SOUTH")
    with admin.expect_navigation():
        admin.locator("#save-entry").click()
    assert said_generation(admin) == generation(world)
    assert admin.locator('#config-entries tr[data-name="CT9"] .entry-site').inner_text() == "SOUTH"
    document = {"hosts": ["10.0.0.5", "10.0.0.6"], "stable_seconds": 30.0, "site": "SOUTH"}
    assert entries(world, ConfigKind.CALLING_AE)["CT9"][1] == document
    [(actor, detail)] = audited(world, "config.calling_ae.saved", "CT9")
    assert actor == "boss" and detail["before"] is None and detail["after"]["document"] == document

    # a bad number: 422, the reason on the page, the form as typed; nothing changed
    admin.locator('#config-entries tr[data-name="CT9"] .edit-entry').click()
    admin.wait_for_url("**/admin/config/calling-aes?edit=CT9")
    assert admin.input_value("#field-name") == "CT9" and admin.input_value("#field-hosts") == "10.0.0.5, 10.0.0.6"
    admin.fill("#field-stable_seconds", "soon")
    admin.fill("#field-hosts", "10.0.0.7")
    with admin.expect_response("**/admin/config/calling-aes/save") as answer:
        admin.locator("#save-entry").click()
    assert answer.value.status == 422
    assert "stable_seconds" in admin.locator("#config-refused").inner_text()
    assert admin.input_value("#field-stable_seconds") == "soon" and admin.input_value("#field-hosts") == "10.0.0.7"
    assert admin.input_value("#field-site") == "SOUTH"
    assert entries(world, ConfigKind.CALLING_AE)["CT9"][1] == document
    # mended, then saved: the audit trail has the before and the after
    admin.fill("#field-stable_seconds", "")
    admin.select_option("#field-site", "")
    with admin.expect_navigation():
        admin.locator("#save-entry").click()
    assert entries(world, ConfigKind.CALLING_AE)["CT9"][1] == {"hosts": ["10.0.0.7"]}
    _, (_, edited) = audited(world, "config.calling_ae.saved", "CT9")
    assert edited["before"]["document"] == document and edited["after"]["document"] == {"hosts": ["10.0.0.7"]}
    # adding one that exists is refused (edit it instead)
    admin.goto(f"{world.api.url}/admin/config/calling-aes")
    admin.fill("#field-name", "CT9")
    with admin.expect_response("**/save") as answer:
        admin.locator("#save-entry").click()
    assert answer.value.status == 422 and "exists already" in admin.locator("#config-refused").inner_text()

    admin.goto(f"{world.api.url}/admin/config/calling-aes")
    with admin.expect_navigation():
        admin.locator('#config-entries tr[data-name="CT9"] .delete-entry').click()
    assert "Deleted. Configuration generation" in admin.locator("#config-done").inner_text()
    assert "CT9" not in entries(world, ConfigKind.CALLING_AE)
    [(actor, deleted)] = audited(world, "config.calling_ae.deleted", "CT9")
    assert actor == "boss" and deleted["before"]["document"] == {"hosts": ["10.0.0.7"]} and deleted["after"] is None
    # the overview shows the change as a difference
    admin.goto(f"{world.api.url}/admin/config")
    change = admin.locator("#config-changes tbody tr").filter(has_text="config.calling_ae.deleted").first
    assert change.locator(".change-object").inner_text() == "CT9"
    assert "(removed)" in change.locator('li[data-key="document.hosts"]').inner_text()


def test_an_administrator_edits_a_rule_and_moves_it(world: Module, chromium: Any) -> None:
    with session_scope(world.settings.database_url) as session:
        app_config.save(session, ConfigKind.ROUTING_RULE, "ct-chest", {"modality": "CT"}, actor="setup")
        app_config.save(session, ConfigKind.ROUTING_RULE, "mr-head", {"modality": "MR"}, actor="setup")
    admin = signed_in_page(chromium, world.api, "boss")
    admin.goto(f"{world.api.url}/admin/config/rules")
    names = admin.locator("#config-entries tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names.index("ct-chest") < names.index("mr-head")
    admin.locator('#config-entries tr[data-name="mr-head"] .edit-entry').click()
    admin.wait_for_url("**/admin/config/rules?edit=mr-head")
    # the common fields are form fields; the newer fields of RoutingRule are too, without a page of their own
    for field in ("modality", "body_part", "calling_ae", "max_images", "windows", "montage", "whole_series"):
        assert admin.locator(f"#field-{field}").count() == 1, field
    assert admin.locator("#field-across_series").count() == 1 and admin.locator("#field-include_derived").count() == 1
    assert admin.locator("#field-shadow_model").count() == 1 and admin.locator("#field-priors").count() == 0
    assert admin.input_value("#field-modality") == "MR" and admin.input_value("#field-max_images") == "8"
    admin.fill("#field-body_part", "head")
    admin.fill("#field-max_images", "12")
    admin.check("#field-across_series")
    admin.fill("#field-json", '{"priors": {"count": 2}}')
    with admin.expect_navigation():
        admin.locator("#save-entry").click()
    saved = said_generation(admin)
    document = {"modality": "MR", "body_part": "HEAD", "max_images": 12, "across_series": True, "priors": {"count": 2}}
    position, stored = entries(world, ConfigKind.ROUTING_RULE)["mr-head"]
    assert stored == document
    [_, (actor, detail)] = audited(world, "config.routing_rule.saved", "mr-head")
    assert actor == "boss" and detail["generation"] == saved
    assert detail["before"]["document"] == {"modality": "MR"} and detail["after"]["document"] == document
    row = admin.locator('#config-entries tr[data-name="mr-head"]')
    assert (
        row.locator(".entry-max_images").inner_text() == "max images: 12"
        and '"count": 2' in row.locator(".entry-rest").inner_text()
    )

    # a JSON box setting a form field's value is refused, the typing kept
    admin.locator('#config-entries tr[data-name="mr-head"] .edit-entry').click()
    admin.fill("#field-json", '{"max_images": 3}')
    with admin.expect_response("**/save") as answer:
        admin.locator("#save-entry").click()
    assert answer.value.status == 422 and "max_images" in admin.locator("#config-refused").inner_text()
    assert admin.input_value("#field-json") == '{"max_images": 3}' and admin.input_value("#field-max_images") == "12"

    # moved up: before ct-chest, positions swapped and audited
    admin.goto(f"{world.api.url}/admin/config/rules")
    before = {name: spot for name, (spot, _) in entries(world, ConfigKind.ROUTING_RULE).items()}
    with admin.expect_navigation():
        admin.locator('#config-entries tr[data-name="mr-head"] .move-up').click()
    assert "Moved." in admin.locator("#config-done").inner_text()
    names = admin.locator("#config-entries tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names.index("mr-head") == names.index("ct-chest") - 1
    after = {name: spot for name, (spot, _) in entries(world, ConfigKind.ROUTING_RULE).items()}
    assert after["mr-head"] < after["ct-chest"] and position == before["mr-head"]
    (_, moved) = audited(world, "config.routing_rule.saved", "mr-head")[-1]
    assert moved["before"]["position"] == before["mr-head"] and moved["after"]["position"] == after["mr-head"]
    assert entries(world, ConfigKind.ROUTING_RULE)["mr-head"][1] == document  # moving changes nothing else
    # and down again: after ct-chest, one more audited change
    with admin.expect_navigation():
        admin.locator('#config-entries tr[data-name="mr-head"] .move-down').click()
    names = admin.locator("#config-entries tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names.index("mr-head") == names.index("ct-chest") + 1
    again = entries(world, ConfigKind.ROUTING_RULE)
    assert again["mr-head"][0] > again["ct-chest"][0] and again["mr-head"][1] == document
    assert len(audited(world, "config.routing_rule.saved", "mr-head")) == 4
    # the topmost cannot go further up
    assert admin.locator("#config-entries tbody tr").first.locator(".move-up").is_disabled()


def test_an_administrator_saves_prompt_versions_and_reads_the_history(world: Module, chromium: Any) -> None:
    admin = signed_in_page(chromium, world.api, "boss")
    admin.goto(f"{world.api.url}/admin/config/prompts")
    admin.fill("#prompt-name", "chest-test")
    admin.fill("#prompt-modality", "cr")
    admin.fill("#prompt-body-parts", "chest, thorax")
    admin.fill("#prompt-task", "Describe the chest radiograph: lungs, heart, bones.")
    with admin.expect_navigation():
        admin.locator("#save-prompt").click()
    assert "Saved." in admin.locator("#config-done").inner_text()
    row = admin.locator('#prompt-templates tr[data-name="chest-test"]')
    assert row.locator(".prompt-version").inner_text() == "v1"
    # a task too short: 422, the typing kept, no new version
    row.locator(".edit-prompt").click()
    admin.wait_for_url("**/admin/config/prompts?edit=chest-test")
    assert admin.input_value("#prompt-body-parts") == "CHEST, THORAX"
    admin.fill("#prompt-task", "Short.")
    with admin.expect_response("**/prompts/save") as answer:
        admin.locator("#save-prompt").click()
    assert answer.value.status == 422 and "task" in admin.locator("#config-refused").inner_text()
    assert admin.input_value("#prompt-task") == "Short." and admin.input_value("#prompt-name") == "chest-test"
    admin.fill("#prompt-task", "Describe the chest radiograph; compare with the prior when there is one.")
    with admin.expect_navigation():
        admin.locator("#save-prompt").click()
    assert said_generation(admin) == generation(world)
    admin.locator('#prompt-templates tr[data-name="chest-test"] .prompt-history').click()
    admin.wait_for_url("**/admin/config/prompts?history=chest-test*")
    versions = admin.locator("#prompt-history li")
    assert [v.get_attribute("data-version") for v in versions.all()] == ["2", "1"]
    assert "compare with the prior" in versions.nth(0).locator(".version-task").inner_text()
    assert "lungs, heart, bones" in versions.nth(1).locator(".version-task").inner_text()
    assert {v.locator(".version-by").inner_text() for v in versions.all()} == {"boss"}
    with session_scope(world.settings.database_url) as session:
        history = rows.prompt_history(session, "chest-test")
        assert [(r.version, r.modality, r.body_parts, r.created_by) for r in history] == [
            (2, "CR", ["CHEST", "THORAX"], "boss"),
            (1, "CR", ["CHEST", "THORAX"], "boss"),
        ]
    [(_, first), (_, second)] = audited(world, "config.prompt.saved", "chest-test/v1") + audited(
        world, "config.prompt.saved", "chest-test/v2"
    )
    assert first["before"] is None and second["before"]["version"] == 1 and second["after"]["version"] == 2

    with admin.expect_navigation():
        admin.locator('#prompt-templates tr[data-name="chest-test"] .retire-prompt').click()
    assert "Retired." in admin.locator("#config-done").inner_text()
    with session_scope(world.settings.database_url) as session:
        assert "chest-test" not in {r.name for r in rows.current_prompts(session)}
        assert rows.prompt_history(session, "chest-test")[0].retired
    [(actor, retired)] = audited(world, "config.prompt.saved", "chest-test/v3")
    assert actor == "boss" and retired["before"]["retired"] is False and retired["after"]["retired"] is True


def test_a_bad_destination_is_refused_without_losing_the_text(world: Module, chromium: Any) -> None:
    admin = signed_in_page(chromium, world.api, "boss")
    admin.goto(f"{world.api.url}/admin/config/destinations")
    assert "never by its value" in admin.locator("#secrets-note").inner_text()
    typed = '{"kind": "dicom", "host": "10.0.0.10",\n "reports": "both"}'
    admin.fill("#field-name", "pacs-test")
    admin.fill("#field-json", typed)
    with admin.expect_response("**/destinations/save") as answer:
        admin.locator("#save-entry").click()
    assert answer.value.status == 422
    assert "needs ae_title, host and port" in admin.locator("#config-refused").inner_text()
    assert admin.input_value("#field-json") == typed and admin.input_value("#field-name") == "pacs-test"
    admin.fill("#field-json", typed.replace("{", "{{"))
    with admin.expect_response("**/destinations/save") as answer:
        admin.locator("#save-entry").click()
    assert answer.value.status == 422 and "not JSON" in admin.locator("#config-refused").inner_text()
    assert "pacs-test" not in entries(world, ConfigKind.DESTINATION)
    assert audited(world, "config.destination.saved", "pacs-test") == []

    admin.fill("#field-json", typed.replace('"host"', '"ae_title": "ORTHANC", "port": 4242, "host"'))
    with admin.expect_navigation():
        admin.locator("#save-entry").click()
    assert said_generation(admin) == generation(world)
    _, document = entries(world, ConfigKind.DESTINATION)["pacs-test"]
    assert document["ae_title"] == "ORTHANC" and document["port"] == 4242 and document["reports"] == "both"
    [(actor, detail)] = audited(world, "config.destination.saved", "pacs-test")
    assert actor == "boss" and detail["before"] is None and detail["after"]["document"] == document
    assert '"ORTHANC"' in admin.locator('#config-entries tr[data-name="pacs-test"] .entry-document').inner_text()


def test_only_administrators_with_a_csrf_token_change_the_configuration(world: Module) -> None:
    rad, uploader, admin = (sign_in(world.api, name) for name in ("north_rad", "upload", "boss"))
    pages = ["/admin/config", *(f"/admin/config/{slug}" for slug in ("calling-aes", "models", "rules", "prompts"))]
    posts = {
        "/admin/config/models/save": {"name": "refused-model", "json": "", "path": "/models/x"},
        "/admin/config/models/delete": {"name": "kept-model"},
        "/admin/config/rules/move": {"name": "kept-rule", "direction": "up"},
        "/admin/config/prompts/save": {"name": "refused", "task": "A task long enough to keep."},
        "/admin/config/prompts/retire": {"name": "refused"},
    }
    with session_scope(world.settings.database_url) as session:
        app_config.save(session, ConfigKind.MODEL, "kept-model", {"path": "/models/kept"}, actor="setup")
    start = generation(world)

    def token(client: httpx.Client) -> str:
        return csrf_of(client.get("/worklist" if client is not uploader else "/upload").text)

    for client in (rad, uploader):
        for path in pages:
            answer = client.get(path)
            assert answer.status_code == 403 and "for administrators" in answer.text, path
        for path, form in posts.items():
            assert client.post(path, data={**form, "csrf_token": token(client)}).status_code == 403, path
    for path, form in posts.items():
        assert admin.post(path, data=form).status_code == 403, path  # no CSRF token
    anonymous = httpx.get(f"{world.api.url}/admin/config/rules", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
    assert generation(world) == start and "refused-model" not in entries(world, ConfigKind.MODEL)
    assert 'href="/admin/config"' not in rad.get("/worklist").text
    assert admin.get("/worklist").text.count('href="/admin/config"') == 1
    assert admin.get("/admin/config/nothing").status_code == 404
    # with the token, the administrator's model is saved: a form field for the path, no JSON needed
    answer = admin.post(
        "/admin/config/models/save", data={**posts["/admin/config/models/save"], "csrf_token": token(admin)}
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith("/admin/config/models?done=saved&g=")
    assert entries(world, ConfigKind.MODEL)["refused-model"][1] == {"path": "/models/x"}
    [(actor, detail)] = audited(world, "config.model.saved", "refused-model")
    assert actor == "boss" and detail["after"]["document"] == {"path": "/models/x"}
    bad = admin.post(
        "/admin/config/models/save", data={"name": "Bad Name!", "path": "/models/y", "csrf_token": token(admin)}
    )
    assert bad.status_code == 422 and "not a valid model name" in bad.text and 'value="Bad Name!"' in bad.text
    with session_scope(world.settings.database_url) as session:
        assert session.scalar(select(ConfigEntry).where(ConfigEntry.name == "Bad Name!")) is None
    # a model a routing rule names stays until the rule lets it go
    with session_scope(world.settings.database_url) as session:
        rule = {"modality": "CT", "shadow_model": "kept-model"}
        app_config.save(session, ConfigKind.ROUTING_RULE, "uses-kept", rule, actor="setup")
    kept = admin.post("/admin/config/models/delete", data={"name": "kept-model", "csrf_token": token(admin)})
    assert kept.status_code == 422 and "is named by routing rule(s) uses-kept" in kept.text
    assert "kept-model" in entries(world, ConfigKind.MODEL)
    with session_scope(world.settings.database_url) as session:
        assert app_config.remove(session, ConfigKind.ROUTING_RULE, "uses-kept", actor="setup")
    # a name is shown as text: an AE title may hold "<" and ">"
    hostile = admin.post(
        "/admin/config/calling-aes/save", data={"name": "<i>AE</i>", "hosts": "", "csrf_token": token(admin)}
    )
    assert hostile.status_code == 303
    page = admin.get("/admin/config/calling-aes").text
    assert "&lt;i&gt;AE&lt;/i&gt;" in page and "<i>AE</i>" not in page and "?edit=%3Ci%3EAE%3C/i%3E" in page
