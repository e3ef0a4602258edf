"""``deploy/``: the Prometheus alert rules pass promtool, and the rules and the Grafana dashboard name only metrics
that a real ``/metrics`` answer exports (a renamed metric would otherwise leave an alert silent for ever).

promtool comes with the Debian package ``prometheus`` (``scripts/system-deps.sh``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.pipeline_rows import add_pipeline_rows
from tests.web.conftest import ApiProcess

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "pacs-vlm.json"
METRIC = re.compile(r"\bpacsvlm_[a-z0-9_]+")
#: The sample names each family type adds to its family's name.
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "summary": ("_sum", "_count")}
#: The alerts the issue asks for (queue backlog, failed jobs, dead letters, disk, no drafts, critical unacked).
WANTED_ALERTS = {
    "PacsVlmQueueBacklog",
    "PacsVlmAnalysisJobsFailing",
    "PacsVlmDeliveriesDeadLettered",
    "PacsVlmDiskBelowMinimum",
    "PacsVlmDiskHeadroomLow",
    "PacsVlmNoDrafts",
    "PacsVlmCriticalFindingUnacknowledged",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run scripts/system-deps.sh (Debian package prometheus)")
    return found


@pytest.fixture
def exported(migrated_postgres_url: str, tmp_path: Path) -> Iterator[set[str]]:
    """Every metric and sample name of a real ``/metrics`` answer over rows of every stage."""
    add_pipeline_rows(migrated_postgres_url)
    api = ApiProcess(tmp_path, {"PACSVLM_DATABASE_URL": migrated_postgres_url, "PACSVLM_MIN_FREE_BYTES": "0"})
    api.start()
    try:
        response = api.get("/metrics")
    finally:
        api.stop()
    assert response.status_code == 200, response.text
    names = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    yield names


def rule_expressions() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert names >= WANTED_ALERTS


def test_rules_and_dashboard_use_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [*rule_expressions(), *dashboard_expressions(dashboard["panels"])]
    used = {name for expression in expressions for name in METRIC.findall(expression)}
    assert used, "no metric names found"
    assert used - exported == set()
    assert "pacsvlm_stage_queued_to_drafted_seconds_bucket" in used


def test_dashboard_parses_with_panels_and_targets() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "pacs-vlm" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["targets"] and all(t["expr"] for t in panel["targets"]) for panel in dashboard["panels"])
