"""Row-derived counters that survive purges: what each purge removed is measured here.

The counters and histograms of ``/metrics`` are aggregates over rows (:mod:`.metrics`, :mod:`.stage_metrics`,
:mod:`.safety_metrics`, :mod:`.shadow_metrics`).  :func:`row_counters` reads every one of them (and the
review-outcome counts, which are exposed as gauges but are totals too) as a flat map of samples; the purge
calls it before and after it deletes a study's rows, in that transaction, and stores the difference
(:func:`integration.store.purge_totals.add_purge_totals`); :mod:`.purged_added` adds the totals back at
scrape time, so a counter equals what was ever counted, purged rows included.  Ratios and means
(acceptance, similarity) are not corrected: they describe the rows kept.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from integration.config import Settings
from integration.store.purge_totals import RowCounters, SampleKey
from integration.web.ops.metrics import database_metrics
from integration.web.ops.purged_added import kept_across_purges, sample_key
from integration.web.ops.safety_metrics import check_metrics, confidence_metrics, decoding_metrics
from integration.web.ops.shadow_metrics import shadow_metrics
from integration.web.ops.stage_metrics import stage_histograms


def row_counters(connection: Connection, settings: Settings) -> dict[SampleKey, float]:
    """Read every row-derived counter's samples on ``connection`` (inside the caller's transaction).

    Parameters
    ----------
    connection : sqlalchemy.Connection
        The purge's connection: what it already deleted is not counted.
    settings : Settings
        The confidence band thresholds.

    Returns
    -------
    dict
        Each sample's value by name and labels (``_created`` samples aside).
    """
    families = [
        *database_metrics(connection),
        *stage_histograms(connection),
        *check_metrics(connection),
        decoding_metrics(connection),
        *confidence_metrics(connection, settings.confidence_low, settings.confidence_high),
        *shadow_metrics(connection),
    ]
    if connection.dialect.name == "postgresql":
        connection.execute(text("SET LOCAL statement_timeout = 0"))  # database_metrics limits it for scrapes
    return {
        sample_key(sample): float(sample.value)
        for family in families
        if kept_across_purges(family)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def counter_reader(settings: Settings) -> RowCounters:
    """Return :func:`row_counters` for the settings, as the purge takes it (``measure``)."""
    return lambda connection: row_counters(connection, settings)
