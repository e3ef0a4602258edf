"""Stage latencies and alerting gauges of ``/metrics`` from rows with known timestamps (PostgreSQL and SQLite).

The collector runs against a migrated database; its exposition text is parsed back with prometheus_client's
parser, so what is checked is what Prometheus would read: bucket bounds, cumulative counts, sums and labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from integration.config import Settings
from integration.store.migrate import upgrade
from integration.web.ops import stage_metrics
from integration.web.ops.stage_metrics import StageCollector
from tests.support.pipeline_rows import (
    DRAFTED_AT,
    MODEL,
    OPEN_ALERT_RAISED_AT,
    PROMPT,
    QUEUED_JOB_CREATED_AT,
    add_pipeline_rows,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.getfixturevalue("migrated_postgres_url")
        return
    url = f"sqlite:///{(tmp_path / 'stages.sqlite').as_posix()}"
    upgrade(url)
    yield url


def scrape(settings: Settings) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StageCollector(settings))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


def buckets(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    """The cumulative bucket counts of one histogram series, by upper bound."""
    found = {}
    for (sample, pairs), value in samples.items():
        named = dict(pairs)
        if sample == f"{name}_bucket" and {k: v for k, v in named.items() if k != "le"} == labels:
            found[named["le"]] = value
    return found


def model(revision: str) -> dict[str, str]:
    return {"model_id": MODEL, "model_revision": revision, "prompt_version": PROMPT}


def test_stage_latencies_from_known_timestamps(database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=database_url, data_dir=tmp_path, min_free_bytes=12345)
    settings.instance_root.mkdir(parents=True)
    empty = scrape(settings)
    assert empty[("pacsvlm_stage_receive_to_stable_seconds_count", ())] == 0
    assert empty[("pacsvlm_last_draft_timestamp_seconds", ())] == 0
    assert not [key for key in empty if key[0].startswith("pacsvlm_stage_queued_to_drafted")]
    assert ("pacsvlm_oldest_queued_job_timestamp_seconds", ()) not in empty

    add_pipeline_rows(database_url)
    samples = scrape(settings)

    receive = buckets(samples, "pacsvlm_stage_receive_to_stable_seconds")
    assert receive["15.0"] == 0 and receive["30.0"] == 1 and receive["60.0"] == 3 and receive["+Inf"] == 3
    assert samples[("pacsvlm_stage_receive_to_stable_seconds_sum", ())] == pytest.approx(115)  # 45 + 20 + 50

    queued = buckets(samples, "pacsvlm_stage_stable_to_queued_seconds")
    assert [queued[le] for le in ("0.1", "0.5", "1.0", "5.0", "+Inf")] == [0, 1, 1, 3, 3]  # 0.3, 2 (retry), 3
    assert samples[("pacsvlm_stage_stable_to_queued_seconds_sum", ())] == pytest.approx(5.3, abs=1e-3)

    drafted_r1 = buckets(samples, "pacsvlm_stage_queued_to_drafted_seconds", **model("r1"))
    assert drafted_r1["60.0"] == 0 and drafted_r1["120.0"] == 1 and drafted_r1["+Inf"] == 1  # 100 s
    drafted_r2 = buckets(samples, "pacsvlm_stage_queued_to_drafted_seconds", **model("r2"))
    assert drafted_r2["3600.0"] == 0 and drafted_r2["14400.0"] == 1  # 4000 s
    key = tuple(sorted(model("r2").items()))
    assert samples[("pacsvlm_stage_queued_to_drafted_seconds_sum", key)] == pytest.approx(4000, abs=1e-3)

    signed = buckets(samples, "pacsvlm_stage_drafted_to_signed_seconds", **model("r1"))
    assert signed["900.0"] == 0 and signed["1800.0"] == 1 and signed["+Inf"] == 1  # the first signature only
    assert not buckets(samples, "pacsvlm_stage_drafted_to_signed_seconds", **model("r2"))  # rejected, unsigned

    acknowledged = buckets(samples, "pacsvlm_stage_raised_to_acknowledged_seconds", **model("r1"))
    assert acknowledged["60.0"] == 0 and acknowledged["300.0"] == 1 and acknowledged["+Inf"] == 1
    assert not buckets(samples, "pacsvlm_stage_raised_to_acknowledged_seconds", **model("r2"))  # still open

    # the hand-written report (newest of all) is no model draft
    assert samples[("pacsvlm_last_draft_timestamp_seconds", ())] == DRAFTED_AT["r2"].timestamp()
    assert samples[("pacsvlm_oldest_queued_job_timestamp_seconds", ())] == QUEUED_JOB_CREATED_AT.timestamp()
    oldest_alert = samples[("pacsvlm_oldest_open_critical_alert_timestamp_seconds", ())]
    assert oldest_alert == OPEN_ALERT_RAISED_AT.timestamp()
    assert samples[("pacsvlm_store_min_free_bytes", ())] == 12345
    assert samples[("pacsvlm_store_free_bytes", ())] > 0
    assert not [name for name, labels in samples if dict(labels).get("model_id") == "manual"]


def test_older_models_are_added_together_as_other(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage_metrics, "MAX_MODEL_LABELS", 1)
    add_pipeline_rows(database_url)
    samples = scrape(Settings(database_url=database_url, data_dir=tmp_path))
    other = {"model_id": "other", "model_revision": "other", "prompt_version": "other"}
    assert buckets(samples, "pacsvlm_stage_queued_to_drafted_seconds", **model("r2"))["+Inf"] == 1  # newest
    assert not buckets(samples, "pacsvlm_stage_queued_to_drafted_seconds", **model("r1"))
    assert buckets(samples, "pacsvlm_stage_queued_to_drafted_seconds", **other)["+Inf"] == 1
    assert buckets(samples, "pacsvlm_stage_drafted_to_signed_seconds", **other)["+Inf"] == 1
    assert ("pacsvlm_store_free_bytes", ()) not in samples  # the instance folder does not exist


def test_unreachable_database_still_gives_the_store(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", data_dir=tmp_path)
    settings.instance_root.mkdir(parents=True)
    samples = scrape(settings)
    assert ("pacsvlm_store_free_bytes", ()) in samples
    assert not [name for name, _ in samples if name.startswith("pacsvlm_stage_")]
