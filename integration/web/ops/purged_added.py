"""Adds back to ``/metrics`` what purges removed from the counters derived from rows, so none goes down.

The purge stores what it removed (:mod:`integration.web.ops.purge_totals` measures it,
:mod:`integration.store.purge_totals` keeps it); :class:`PurgedRowsAdded` wraps each collector of the
registry and adds those totals to its counters, histograms and counting gauges.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from prometheus_client.core import Metric
from prometheus_client.samples import Sample
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.store.purge_totals import SampleKey, read_purge_totals
from integration.store.session import engine_for
from integration.web.ops.health import describe_error

logger = logging.getLogger(__name__)

#: Gauges that count rows (totals that must not fall when rows are purged).
COUNTING_GAUGES = frozenset({"pacsvlm_review_outcomes", "pacsvlm_review_findings"})


class Collector(Protocol):
    """What the registry collects from."""

    def collect(self) -> Iterable[Metric]:
        """Return the metric families."""
        ...


def kept_across_purges(metric: Metric) -> bool:
    """Tell whether a family must never go down (a counter, a histogram, a counting gauge)."""
    return metric.type in ("counter", "histogram") or metric.name in COUNTING_GAUGES


def sample_key(sample: Sample) -> SampleKey:
    """Return a sample's name and sorted labels."""
    return sample.name, tuple(sorted(sample.labels.items()))


def add_purged(families: Iterable[Metric], totals: dict[SampleKey, float]) -> list[Metric]:
    """Add the purged totals to the samples of the families that must never go down.

    A sample whose rows are all gone (a model label no longer in any row) comes back with its total alone.
    """
    result = list(families)
    if not totals:
        return result
    for family in result:
        if not kept_across_purges(family):
            continue
        mine = {key: value for key, value in totals.items() if key[0].startswith(family.name)}
        seen = set()
        samples = []
        for sample in family.samples:
            key = sample_key(sample)
            seen.add(key)
            extra = mine.get(key, 0.0)
            samples.append(sample._replace(value=sample.value + extra) if extra else sample)
        for key, value in mine.items():
            if key not in seen and _belongs(family, key[0]):
                samples.append(Sample(key[0], dict(key[1]), value))
        family.samples = samples
    return result


def _belongs(family: Metric, sample_name: str) -> bool:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
    return any(sample_name == family.name + suffix for suffix in suffixes)


class PurgedRowsAdded:
    """Wraps a collector: its counters get what purges removed added back (nothing added when unreadable).

    Parameters
    ----------
    inner : Collector
        The collector whose families are corrected.
    settings : Settings
        The database the totals are read from.
    """

    def __init__(self, inner: Collector, settings: Settings) -> None:
        self.inner = inner
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        """Describe nothing in advance: registering must not query the database."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Collect the inner families and add the purged totals to them."""
        families = list(self.inner.collect())
        try:
            with engine_for(self.settings.database_url).connect() as connection:
                totals = read_purge_totals(connection)
        except SQLAlchemyError as exc:
            logger.warning("metrics: purge totals not read: %s", describe_error(exc))
            return families
        return add_purged(families, totals)
