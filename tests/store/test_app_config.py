"""Configuration kept in the database: the seed, the checks, the audit, the live settings and ``pacs-vlm config``.

Why: an administrator changes destinations, calling AEs, rules, models and prompts while everything runs;
the environment seeds a new database once (an emptied kind stays empty), two processes seeding at once copy
everything once, a refused document changes nothing, every change is audited with before and after, and a
process sees a change at its next poll, keeps its last good configuration when the database is away, and
skips an entry that no longer validates.  All on a migrated PostgreSQL database; the CLI runs in-process
(typer's runner) and, for the concurrent seed, as two real processes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from integration.app_config import ConfigRefused, save, save_prompt
from integration.app_config import remove as remove_entry
from integration.config import Settings
from integration.config_seed import seed_configuration
from integration.live_config import LiveConfig, live_snapshot, prompt_names
from integration.store import app_config as rows
from integration.store.config_tables import ConfigEntry, ConfigKind, PromptTemplateRow
from integration.store.session import session_scope
from integration.store.tables import AuditEvent
from models.prompts import TEMPLATES, template_names
from worker.cli import app
from worker.live_prompts import builtin_prompt_seeds, seed_prompts, templates_in_force

DESTINATIONS = [{"name": "drop", "kind": "folder", "folder": "/tmp/pacs-vlm-drop", "reports": "signed"}]


def environment(url: str) -> dict[str, str]:
    return {
        "PACSVLM_DATABASE_URL": url,
        "PACSVLM_CALLING_AES": json.dumps({"MOD1": {"stable_seconds": 5}, "MOD2": {"hosts": ["10.0.0.2"]}}),
        "PACSVLM_DESTINATIONS": json.dumps(DESTINATIONS),
        "PACSVLM_MODELS": json.dumps({"medgemma-4b": "/models/medgemma-4b"}),
        "PACSVLM_CONFIG_POLL_SECONDS": "0.1",
        "COLUMNS": "250",
        "USER": "admin1",
    }


def settings_of(url: str) -> Settings:
    env = environment(url)
    return Settings.model_validate(
        {
            "database_url": url,
            "calling_aes": json.loads(env["PACSVLM_CALLING_AES"]),
            "destinations": DESTINATIONS,
            "models": {"medgemma-4b": "/models/medgemma-4b"},
            "config_poll_seconds": 0.1,
        }
    )


def seed(url: str, settings: Settings | None = None) -> list[str]:
    with session_scope(url) as session:
        return seed_configuration(session, settings or settings_of(url), builtin_prompt_seeds())


def names(url: str, kind: ConfigKind) -> list[str]:
    with session_scope(url) as session:
        return [entry.name for entry in rows.list_entries(session, kind)]


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_the_seed_copies_each_kind_once_and_an_emptied_kind_stays_empty(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    settings = settings_of(url)
    assert live_snapshot(settings).settings.calling_aes.keys() == {"MOD1", "MOD2"}  # not seeded: the environment's
    assert seed(url) == ["calling_ae", "destination", "routing_rule", "model", "prompt"]
    assert names(url, ConfigKind.CALLING_AE) == ["MOD1", "MOD2"]
    assert names(url, ConfigKind.DESTINATION) == ["drop"]
    assert names(url, ConfigKind.ROUTING_RULE)[:2] == ["ct-chest", "ct-head"]  # the built-in rules, in order
    assert names(url, ConfigKind.MODEL) == ["medgemma-4b"]
    with session_scope(url) as session:
        prompts = rows.current_prompts(session)
        assert [(p.name, p.version) for p in prompts] == [(t.name, t.version) for t in TEMPLATES]
        generation = rows.generation(session)
    assert seed(url) == []  # once
    with session_scope(url) as session:
        assert rows.generation(session) == generation
        for title in ("MOD1", "MOD2"):
            rows.delete_entry(session, ConfigKind.CALLING_AE, title, actor="admin")
    assert seed(url) == []
    assert names(url, ConfigKind.CALLING_AE) == []  # emptied on purpose: the environment does not come back
    live = LiveConfig(settings)
    assert live.snapshot().settings.calling_aes == {}
    assert live.snapshot().settings.destinations[0].name == "drop"


def test_two_processes_seeding_at_once_copy_everything_once(migrated_postgres_url: str) -> None:
    env = {**os.environ, **environment(migrated_postgres_url)}
    command = [sys.executable, "-m", "worker.cli", "config", "seed"]
    started = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0].decode() for process in started]
    assert [process.returncode for process in started] == [0, 0], outputs
    assert sum("seeded from the environment" in out for out in outputs) == 1, outputs
    assert sum("nothing to seed" in out for out in outputs) == 1, outputs
    assert names(migrated_postgres_url, ConfigKind.CALLING_AE) == ["MOD1", "MOD2"]
    with session_scope(migrated_postgres_url) as session:
        assert session.scalar(select(text("count(*)")).select_from(PromptTemplateRow)) == len(TEMPLATES)
        assert rows.seeded_kinds(session) == {"calling_ae", "destination", "routing_rule", "model", "prompt"}


def test_refused_documents_change_nothing_and_changes_are_audited(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    refusals: list[tuple[ConfigKind, str, dict[str, Any], str]] = [
        (ConfigKind.CALLING_AE, "MOD1", {"stable_seconds": 0}, "stable_seconds"),
        (ConfigKind.CALLING_AE, "BACK\\SLASH", {}, "not a valid AE title"),
        (ConfigKind.DESTINATION, "pacs", {"kind": "dicom"}, "destination 'pacs'"),
        (ConfigKind.ROUTING_RULE, "ct", {"modality": "CT", "max_images": 0}, "max_images"),
        (ConfigKind.MODEL, "Big Model", {"path": "/models/x"}, "not a valid model name"),
        (ConfigKind.MODEL, "small", {"path": "/models/x", "device": "gpu"}, "device"),
    ]
    with session_scope(url) as session:
        for kind, name, document, reason in refusals:
            with pytest.raises(ConfigRefused, match=reason):
                save(session, kind, name, document, actor="admin")
        with pytest.raises(ConfigRefused, match="task"):
            save_prompt(session, "short", {"task": "too short"}, actor="admin")
        assert rows.generation(session) == 0
    with session_scope(url) as session:
        save(session, ConfigKind.CALLING_AE, "MOD1", {"stable_seconds": 5}, actor="admin")
    with session_scope(url) as session:
        save(session, ConfigKind.CALLING_AE, "MOD1", {"stable_seconds": 9, "site": "NORTH"}, actor="admin2")
    with session_scope(url) as session:
        rows.delete_entry(session, ConfigKind.CALLING_AE, "MOD1", actor="admin3")
    with session_scope(url) as session:
        events = session.execute(
            select(AuditEvent.actor, AuditEvent.action, AuditEvent.detail).order_by(AuditEvent.id)
        ).all()
        assert session.scalar(select(text("count(*)")).select_from(ConfigEntry)) == 0
    assert [(actor, action) for actor, action, _ in events] == [
        ("admin", "config.calling_ae.saved"),
        ("admin2", "config.calling_ae.saved"),
        ("admin3", "config.calling_ae.deleted"),
    ]
    assert events[0][2]["before"] is None and events[0][2]["after"]["document"] == {"stable_seconds": 5.0}
    assert events[1][2]["before"]["document"] == {"stable_seconds": 5.0}
    assert events[1][2]["after"]["document"] == {"stable_seconds": 9.0, "site": "NORTH"}
    assert events[2][2]["before"]["document"]["site"] == "NORTH" and events[2][2]["after"] is None
    assert [event[2]["generation"] for event in events] == [1, 2, 3]


def test_live_settings_follow_the_generation_skip_a_stale_entry_and_survive_a_lost_database(
    migrated_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = migrated_postgres_url
    settings = settings_of(url)
    seed(url)
    live = LiveConfig(settings)
    assert set(live.snapshot().settings.calling_aes) == {"MOD1", "MOD2"}
    assert [t.key for t in templates_in_force(settings)] == [t.key for t in TEMPLATES]
    assert prompt_names(settings) == template_names()  # the database's names, seeded from the built-ins
    with session_scope(url) as session:
        save(session, ConfigKind.CALLING_AE, "NEWCT", {"site": "SOUTH"}, actor="admin")
        save_prompt(session, "ct-chest", {"modality": "CT", "task": "Describe the chest CT in detail."}, actor="admin")
        rows.put_entry(session, ConfigKind.MODEL, "stale", {"path": "/m", "removed_field": 1}, actor="upgrade")
    with caplog.at_level(logging.WARNING, logger="integration.live_config"):
        snapshot = live.refresh()
    assert snapshot.settings.calling_aes["NEWCT"].site == "SOUTH"
    assert set(snapshot.settings.models) == {"medgemma-4b"}  # the stale entry is skipped, named in the log
    assert "model 'stale' no longer validates" in caplog.text
    assert snapshot.prompts is not None and snapshot.prompts[0].version == 4
    with session_scope(url) as session:
        session.execute(text("ALTER TABLE config_generation RENAME TO config_generation_away"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="integration.live_config"):
        assert live.refresh().settings.calling_aes.keys() == snapshot.settings.calling_aes.keys()
        assert live.refresh() is live.refresh()
    assert caplog.text.count("the last good configuration stays") == 1  # logged once
    with session_scope(url) as session:
        session.execute(text("ALTER TABLE config_generation_away RENAME TO config_generation"))
        rows.delete_entry(session, ConfigKind.CALLING_AE, "NEWCT", actor="admin")
    time.sleep(0.3)  # past the poll interval: a failing database is asked again only after 30 s, not every poll
    assert "NEWCT" in live.snapshot().settings.calling_aes
    assert "NEWCT" not in live.refresh().settings.calling_aes


def test_config_commands(migrated_postgres_url: str, tmp_path: Path) -> None:
    env = environment(migrated_postgres_url)
    code, out = run(env, "config", "list")
    assert code == 0 and "not in the database yet" in out
    code, out = run(env, "config", "seed")
    assert code == 0 and "calling_ae, destination, routing_rule, model, prompt" in out
    code, out = run(env, "config", "list", "calling-ae")
    assert code == 0 and "MOD1" in out and "MOD2" in out and "ct-chest" not in out
    code, out = run(env, "config", "set", "calling_ae", "CT9", "--json", '{"hosts": ["10.0.0.9"], "site": "EAST"}')
    assert code == 0 and "calling_ae 'CT9' saved at position 2" in out
    code, out = run(env, "config", "show", "calling_ae", "CT9")
    assert code == 0 and json.loads(out)["document"] == {"hosts": ["10.0.0.9"], "site": "EAST"}
    document = tmp_path / "rule.json"
    document.write_text('{"modality": "CT", "body_part": "ABDOMEN", "max_images": 6}')
    code, out = run(env, "config", "set", "routing_rule", "ct-abdomen", "--file", str(document), "--position", "0")
    assert code == 0 and "position 0" in out
    for args, reason in [
        (("config", "set", "calling_ae", "CT9", "--json", '{"stable_seconds": -1}'), "greater than 0"),
        (("config", "set", "calling_ae", "CT9", "--json", "[1]"), "must be a JSON object"),
        (("config", "set", "calling_ae", "CT9", "--json", "{nope"), "not JSON"),
        (("config", "set", "calling_ae", "CT9"), "either --json"),
        (("config", "set", "printer", "x", "--json", "{}"), "unknown kind"),
        (("config", "set", "destination", "d", "--file", str(tmp_path / "missing.json")), "cannot read"),
    ]:
        code, out = run(env, *args)
        assert code == 2 and reason in out, (args, out)
    code, out = run(env, "config", "show", "calling_ae", "NOPE")
    assert code == 1 and "no calling_ae named 'NOPE'" in out
    code, out = run(env, "config", "delete", "calling_ae", "CT9")
    assert code == 0 and "deleted" in out
    code, out = run(env, "config", "delete", "calling_ae", "CT9")
    assert code == 1 and "no calling_ae named" in out
    task = tmp_path / "task.txt"
    task.write_text("These are axial CT slices of the abdomen. Describe liver, kidneys and bowel.\n")
    code, out = run(env, "config", "prompt", "set", "ct-abdomen", "--modality", "ct", "--body-part", "abdomen",
                    "--task-file", str(task), "--position", "0")  # fmt: skip
    assert code == 0 and "prompt ct-abdomen/v1 in force" in out
    code, out = run(env, "config", "prompt", "set", "ct-chest", "--modality", "CT", "--task-file", str(task))
    assert code == 0 and "ct-chest/v4" in out
    code, out = run(env, "config", "prompt", "show", "ct-chest", "--history")
    assert code == 0 and [v["version"] for v in json.loads(out)] == [4, 3]
    code, out = run(env, "config", "prompt", "retire", "mr")
    assert code == 0 and "retired (v4)" in out
    code, out = run(env, "config", "prompt", "list")
    assert code == 0 and "ct-abdomen" in out and "mr " not in out.replace("│", " ")
    code, out = run(env, "config", "prompt", "set", "Bad Name", "--task-file", str(task))
    assert code == 2 and "not a valid prompt name" in out
    code, out = run(env, "config", "prompt", "show", "nope")
    assert code == 1 and "no prompt template named" in out
    code, out = run(env, "config", "export")
    exported = json.loads(out)
    assert code == 0 and exported["entries"]["routing_rule"][0]["name"] == "ct-abdomen"
    assert {(p["name"], p["version"]) for p in exported["prompts"]} >= {("ct-chest", 3), ("ct-chest", 4), ("mr", 4)}
    with session_scope(migrated_postgres_url) as session:
        actors = set(session.scalars(select(AuditEvent.actor).where(AuditEvent.source == "cli")))
    assert actors == {"cli:admin1"}
    for args in (("config", "--help"), ("config", "prompt", "set", "--help"), ("config", "set", "--help")):
        code, out = run(env, *args)
        assert code == 0 and "Usage" in out


def test_db_upgrade_seeds_the_environment_and_a_worker_start_the_prompts(postgres_url: str) -> None:
    env = environment(postgres_url)
    code, out = run(env, "db", "upgrade")
    assert code == 0 and "seeded from the environment: calling_ae, destination, routing_rule, model" in out
    code, out = run(env, "db", "upgrade")
    assert code == 0 and "seeded" not in out  # once
    with session_scope(postgres_url) as session:
        assert "prompt" not in rows.seeded_kinds(session)
    settings = settings_of(postgres_url)
    assert [t.key for t in templates_in_force(settings)] == [t.key for t in TEMPLATES]  # the built-ins meanwhile
    assert seed_prompts(settings) == ["prompt"]  # what `pacs-vlm worker` does at its start
    assert seed_prompts(settings) == []
    with session_scope(postgres_url) as session:
        assert [(p.name, p.version) for p in rows.current_prompts(session)] == [(t.name, t.version) for t in TEMPLATES]


def test_a_rule_names_only_configured_models_and_prompts_and_they_stay_while_named(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    with session_scope(url) as session:  # nothing seeded yet: the names are the environment's, checked at job time
        save(session, ConfigKind.ROUTING_RULE, "early", {"modality": "CT", "model": "anything"}, actor="admin")
    seed(url)
    refused = [
        ({"modality": "CT", "model": "gpt-x"}, "model 'gpt-x'"),
        ({"modality": "CT", "shadow_model": "gpt-x"}, "shadow_model 'gpt-x'"),
        ({"modality": "CT", "prompt": "no-such-prompt"}, "prompt 'no-such-prompt'"),
    ]
    with session_scope(url) as session:
        for document, reason in refused:
            with pytest.raises(ConfigRefused, match=f"names {reason}, which is not configured"):
                save(session, ConfigKind.ROUTING_RULE, "ct", document, actor="admin")
        save(
            session,
            ConfigKind.ROUTING_RULE,
            "ct",
            {"modality": "CT", "shadow_model": "medgemma-4b", "prompt": "ct-chest"},
            actor="admin",
        )
    with session_scope(url) as session:
        with pytest.raises(ConfigRefused, match=r"model 'medgemma-4b' is named by routing rule\(s\) ct"):
            remove_entry(session, ConfigKind.MODEL, "medgemma-4b", actor="admin")
        current = next(p for p in rows.current_prompts(session) if p.name == "ct-chest")
        fields = {"modality": current.modality, "body_parts": list(current.body_parts), "task": current.task}
        with pytest.raises(ConfigRefused, match=r"prompt 'ct-chest' is named by routing rule\(s\) ct"):
            save_prompt(session, "ct-chest", fields, actor="admin", retired=True)
    with session_scope(url) as session:
        assert "medgemma-4b" in [entry.name for entry in rows.list_entries(session, ConfigKind.MODEL)]
        assert remove_entry(session, ConfigKind.ROUTING_RULE, "ct", actor="admin")
        assert remove_entry(session, ConfigKind.MODEL, "medgemma-4b", actor="admin")  # no rule names it now


def test_an_empty_variable_seeds_nothing_and_a_first_entry_makes_the_database_hold_the_kind(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    bare = Settings.model_validate({"database_url": url, "config_poll_seconds": 0.1})  # no AE, destination, model
    assert seed(url, bare) == ["routing_rule", "prompt"]  # the built-in rules and prompts; nothing else
    env = Settings.model_validate({**bare.model_dump(), "calling_aes": {"LATER": {}}})  # set after the upgrade
    assert set(live_snapshot(env).settings.calling_aes) == {"LATER"}  # still the process's own
    with session_scope(url) as session:
        save(session, ConfigKind.CALLING_AE, "CT1", {}, actor="admin")
        assert "calling_ae" in rows.seeded_kinds(session)
    time.sleep(0.2)
    assert set(live_snapshot(env).settings.calling_aes) == {"CT1"}  # the database holds the kind now
