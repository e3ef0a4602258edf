"""What purges removed from the row-derived metrics: accumulated with each purge, read by ``/metrics``.

Prometheus counters and histograms must never go down, but ``/metrics`` derives them from rows (one
``count(*)`` per scrape), and a purge deletes rows.  So the purge measures the metrics before and after it
deletes a study's rows, inside the same transaction, and adds the difference here
(:func:`add_purge_totals`); ``/metrics`` adds :func:`read_purge_totals` to what the rows say.  A rolled back
purge adds nothing.  These functions add and flush; the caller commits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from integration.store.retention_tables import PurgeTotal

#: A sample's key: its name and its labels (sorted name-value pairs).
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
#: Reads every row-derived counter's samples on a connection (the web layer's, handed to the purge).
RowCounters = Callable[[Connection], dict[SampleKey, float]]


def labels_json(labels: tuple[tuple[str, str], ...]) -> str:
    """Return a sample's labels as stored (JSON with sorted keys)."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def removed_by(before: Mapping[SampleKey, float], after: Mapping[SampleKey, float]) -> dict[SampleKey, float]:
    """Return what the rows deleted between two readings contributed to each sample (before less after).

    Only the delete happened between them, so every difference is the deleted rows' share: a counter's is
    positive; a histogram's sum may be negative (an observation below zero, clocks apart).
    """
    removed: dict[SampleKey, float] = {}
    for key in before.keys() | after.keys():
        difference = before.get(key, 0.0) - after.get(key, 0.0)
        if difference and math.isfinite(difference):
            removed[key] = difference
    return removed


def add_purge_totals(session: Session, removed: Mapping[SampleKey, float]) -> None:
    """Add what a purge removed from each sample to the totals (an upsert per sample, in the caller's transaction)."""
    rows = [
        {"sample": name, "labels": labels_json(labels), "value": float(value)}
        for (name, labels), value in removed.items()
        if value and math.isfinite(value)
    ]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    for row in rows:
        statement = insert(PurgeTotal).values(**row)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[PurgeTotal.sample, PurgeTotal.labels],
                set_={"value": PurgeTotal.value + statement.excluded.value},
            )
        )
    session.flush()


def read_purge_totals(connection: Connection) -> dict[SampleKey, float]:
    """Return every sample's purged total."""
    totals: dict[SampleKey, float] = {}
    for name, labels, value in connection.execute(select(PurgeTotal.sample, PurgeTotal.labels, PurgeTotal.value)):
        key = (name, tuple(sorted((str(k), str(v)) for k, v in json.loads(labels).items())))
        totals[key] = float(value)
    return totals
