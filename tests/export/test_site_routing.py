"""Per-site and per-modality destinations: a report goes only where its study's site and modalities are taken.

PostgreSQL and Redis are real; the end-to-end case runs the delivery worker (`pacs-vlm worker --queues
delivery`) with one folder per site, and checks that site B's folder never receives site A's report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from integration.config import Settings
from integration.destinations import Destination
from integration.export.outbox import queue_deliveries
from integration.store.session import session_scope
from integration.store.tables import Site, Study
from tests.export.test_delivery import delivery_env, states, stored_report
from tests.support.peers import WorkerProcess, wait_until
from tests.support.records import db_rows


def with_site(settings: Settings, code: str | None) -> int:
    """A stored draft report (CT_small: modality CT) whose study belongs to site ``code`` (None: no site)."""
    report_id = stored_report(settings)
    with session_scope(settings.database_url) as session:
        sites = {}
        for site_code in ("A", "B"):
            site = Site(code=site_code, name=f"Hospital {site_code}")
            session.add(site)
            session.flush()
            sites[site_code] = site.id
        session.execute(update(Study).values(site_id=sites[code] if code else None))
    return report_id


def routed(url: str) -> set[str]:
    return {destination for (destination,) in db_rows(url, "SELECT DISTINCT destination FROM deliveries")}


def test_site_and_modality_filters_are_validated_and_upper_cased() -> None:
    ris = Destination(name="ris", kind="mllp", host="ris", port=2575, sites=["a", " b", "A"], modalities=["ct"])
    assert ris.sites == ("A", "B") and ris.modalities == ("CT",)
    assert ris.serves("a", ["CT", None]) and ris.serves("B", ["ct"])
    assert not ris.serves("C", ["CT"]) and not ris.serves(None, ["CT"]) and not ris.serves("A", ["MR"])
    everyone = Destination(name="all", kind="folder", folder="/x")
    assert everyone.serves(None, []) and everyone.serves("Z", ["XA"])
    with pytest.raises(ValueError, match="site codes and modalities"):
        Destination(name="bad", kind="folder", folder="/x", sites=["A|B"])


@pytest.mark.parametrize(
    ("site", "expected"),
    [
        ("A", {"ris-a", "ris-ab", "everyone", "ct-only"}),
        ("B", {"ris-b", "ris-ab", "everyone", "ct-only"}),
        (None, {"everyone", "ct-only"}),  # a study without a site goes only where no site is listed
    ],
)
def test_deliveries_are_created_only_for_destinations_of_the_studys_site_and_modality(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, site: str | None, expected: set[str]
) -> None:
    folder = str(tmp_path / "out")
    destinations = [
        {"name": "ris-a", "kind": "folder", "folder": folder, "reports": "both", "sites": ["A"]},
        {"name": "ris-b", "kind": "folder", "folder": folder, "reports": "both", "sites": ["b"]},
        {"name": "ris-ab", "kind": "folder", "folder": folder, "reports": "both", "sites": ["A", "B"]},
        {"name": "everyone", "kind": "folder", "folder": folder, "reports": "both"},
        {"name": "ct-only", "kind": "folder", "folder": folder, "reports": "both", "modalities": ["CT"]},
        {"name": "mr-only", "kind": "folder", "folder": folder, "reports": "both", "modalities": ["MR", "PT"]},
        {"name": "a-mr", "kind": "folder", "folder": folder, "reports": "both", "sites": ["A"], "modalities": ["MR"]},
    ]
    settings = Settings(
        data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url, destinations=destinations
    )
    report_id = with_site(settings, site)
    sent = queue_deliveries(settings, report_id, None, "draft")
    assert routed(migrated_postgres_url) == expected
    assert len(sent) == 2 * len(expected)  # fhir and hl7 each


def test_site_a_report_reaches_site_a_ris_and_never_site_b_ris(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    destinations: list[dict[str, object]] = [
        {"name": "ris-a", "kind": "folder", "folder": str(tmp_path / "a"), "reports": "both", "sites": ["A"]},
        {"name": "ris-b", "kind": "folder", "folder": str(tmp_path / "b"), "reports": "both", "sites": ["B"]},
    ]
    settings = Settings(
        data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url, destinations=destinations
    )
    report_id = with_site(settings, "A")
    worker = worker_factory(
        settings.data_dir, migrated_postgres_url, redis_url, None, queues="delivery",
        extra_env=delivery_env(settings, destinations),
    )  # fmt: skip
    assert len(queue_deliveries(settings, report_id, None, "draft")) == 2
    wait_until(
        lambda: states(migrated_postgres_url) == {"ris-a/fhir": ("delivered", 1), "ris-a/hl7": ("delivered", 1)},
        timeout=90,
        message=f"site A's RIS has the report: {states(migrated_postgres_url)}\n{worker.log()[-2000:]}",
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        f"draft-{report_id}.fhir.json",
        f"draft-{report_id}.hl7",
    ]
    assert not (tmp_path / "b").exists()  # site B's RIS never got a delivery, not even a folder
    assert routed(migrated_postgres_url) == {"ris-a"}
