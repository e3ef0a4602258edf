"""Alembic migrations on PostgreSQL and SQLite: up, down, up again, and no drift from the tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from integration.store import migrate
from integration.store.tables import Base

TABLES = {
    "studies",
    "shadow_outcomes",
    "user_sites",
    "sso_identities",
    "sso_sign_ins",
    "study_purges",
    "purge_totals",
    "config_entries",
    "config_generation",
    "prompt_templates",
    "series",
    "instances",
    "analysis_jobs",
    "audit_events",
    "reports",
    "review_changes",
    "review_outcomes",
    "report_revisions",
    "deliveries",
    "report_objects",
    "sites",
    "users",
    "user_sessions",
    "sign_in_throttle",
    "prior_searches",
    "study_priors",
    "orders",
    "order_events",
    "inbound_messages",
    "performed_steps",
    "critical_alerts",
    "alert_notifications",
    "study_claims",
    "upload_cases",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_url")
    else:
        yield f"sqlite:///{(tmp_path / 'migrations.sqlite').as_posix()}"


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_without_drift(database_url: str) -> None:
    migrate.upgrade(database_url)
    assert table_names(database_url) == TABLES | {"alembic_version"}
    assert migrate.current_revision(database_url) == migrate.head_revision()

    migrate.downgrade(database_url, "base")
    assert table_names(database_url) == {"alembic_version"}
    assert migrate.current_revision(database_url) is None

    migrate.upgrade(database_url)
    assert table_names(database_url) == TABLES | {"alembic_version"}
    assert migrate.current_revision(database_url) == migrate.head_revision()
    assert drift(database_url) == []


def test_check_constraints_and_indexes_match_the_tables(database_url: str) -> None:
    """Autogenerate does not compare CHECK constraints, so compare them (and index names) by name."""
    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    try:
        inspector = inspect(engine)
        all_checks = set()
        for table in Base.metadata.sorted_tables:
            wanted_checks = {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
            found_checks = {c["name"] for c in inspector.get_check_constraints(table.name)}
            assert wanted_checks == found_checks, table.name
            all_checks |= wanted_checks
            found_indexes = {i["name"] for i in inspector.get_indexes(table.name) if not i.get("duplicates_constraint")}
            assert {i.name for i in table.indexes} == found_indexes, table.name
        assert all_checks == {
            "ck_studies_study_state",
            "ck_analysis_jobs_job_state",
            "ck_reports_report_status",
            "ck_reports_report_purpose",
            "ck_reports_signed_is_primary",
            "ck_report_revisions_revision_status",
            "ck_deliveries_delivery_state",
            "ck_users_user_role",
            "ck_prior_searches_prior_search_state",
            "ck_study_priors_prior_state",
            "ck_critical_alerts_alert_state",
            "ck_alert_notifications_notification_state",
            "ck_report_objects_report_object_kind",
            "ck_study_purges_purge_scope",
            "ck_config_entries_config_kind",
        }
        with engine.connect() as connection, pytest.raises(IntegrityError):
            connection.execute(
                text(
                    "INSERT INTO studies (study_uid, state, version, calling_ae, first_received_at,"
                    " last_received_at, stable_after, updated_at)"
                    " VALUES ('1.2.3', 'bogus', 1, 'CT1', :t, :t, :t, :t)"
                ),
                {"t": "2026-01-01 00:00:00"},
            )
    finally:
        engine.dispose()


def test_ensure_schema_refuses_an_empty_postgres_database(postgres_url: str) -> None:
    with pytest.raises(migrate.SchemaOutOfDate, match="pacs-vlm db upgrade"):
        migrate.ensure_schema(postgres_url)
    assert table_names(postgres_url) == set()  # nothing was created behind the administrator's back
    migrate.upgrade(postgres_url)
    migrate.ensure_schema(postgres_url)  # at head: fine


def test_ensure_schema_refuses_an_old_postgres_schema(postgres_url: str) -> None:
    migrate.upgrade(postgres_url)
    migrate.downgrade(postgres_url, "base")
    with pytest.raises(migrate.SchemaOutOfDate, match="pacs-vlm db upgrade"):
        migrate.ensure_schema(postgres_url)


def test_ensure_schema_upgrades_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'sub' / 'embedded.sqlite').as_posix()}"
    migrate.ensure_schema(url)
    assert table_names(url) == TABLES | {"alembic_version"}
    assert migrate.current_revision(url) == migrate.head_revision()
    migrate.ensure_schema(url)  # idempotent
    assert drift(url) == []
