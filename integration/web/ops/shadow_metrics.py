"""Prometheus metrics of shadow mode: how each candidate model's hidden drafts agree with what was signed.

Read from ``shadow_outcomes`` at scrape time (:func:`integration.store.shadow.shadow_summaries`), per
candidate model id, revision and prompt version, so a hospital can compare a candidate with the model in
service (whose numbers are the review outcomes) before switching:

* ``pacsvlm_shadow_outcomes_total``: shadow drafts compared with a signed report;
* ``pacsvlm_shadow_findings_total{fate}``: the shadow findings kept as written (``accepted``), reworded
  (``edited``), absent from the signed report (``rejected``), and the signed findings the shadow missed
  (``added``);
* ``pacsvlm_shadow_finding_agreement_ratio``: findings both have / findings either has;
* ``pacsvlm_shadow_text_similarity_mean``: mean text similarity of shadow draft and signed report (0 to 1).

A collector of its own: a failed query costs these families (logged), never the operational ones.  Labels
are bounded by the candidates deployed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.session import engine_for
from integration.store.shadow import shadow_summaries
from integration.web.ops.health import describe_error

logger = logging.getLogger(__name__)

#: Longest the query may run on PostgreSQL (milliseconds).
STATEMENT_TIMEOUT_MS = 5000
#: The label names of every family.
LABELS = ["model_id", "model_revision", "prompt_version"]
#: What became of the findings, as counted in ``pacsvlm_shadow_findings_total``.
FATES = ("accepted", "edited", "rejected", "added")


def shadow_metrics(connection: Connection) -> list[Metric]:
    """Return the shadow-mode families read on ``connection`` (only read)."""
    with Session(bind=connection) as session:
        summaries = shadow_summaries(session)
    outcomes = CounterMetricFamily(
        "pacsvlm_shadow_outcomes",
        "Shadow drafts (a routing rule's candidate model, hidden from reviewers) compared with the signed report",
        labels=LABELS,
    )
    findings = CounterMetricFamily(
        "pacsvlm_shadow_findings",
        "Shadow draft findings the signed report kept (accepted), reworded (edited) or lacks (rejected), "
        "and signed findings the shadow draft missed (added)",
        labels=[*LABELS, "fate"],
    )
    agreement = GaugeMetricFamily(
        "pacsvlm_shadow_finding_agreement_ratio",
        "Findings the shadow draft and the signed report share / findings either has",
        labels=LABELS,
    )
    similarity = GaugeMetricFamily(
        "pacsvlm_shadow_text_similarity_mean",
        "Mean text similarity of shadow draft and signed report (1 - edit distance / longer length)",
        labels=LABELS,
    )
    for summary in summaries:
        key = [summary.model_id, summary.model_revision, summary.prompt_version]
        outcomes.add_metric(key, summary.outcomes)
        for fate in FATES:
            findings.add_metric([*key, fate], getattr(summary, fate))
        agreement.add_metric(key, summary.finding_agreement)
        similarity.add_metric(key, summary.text_similarity_mean)
    return [outcomes, findings, agreement, similarity]


class ShadowCollector:
    """Collects the shadow-mode metrics at scrape time.

    Parameters
    ----------
    settings : Settings
        The database.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        """Describe nothing in advance: registering must not query the database."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Query the database; nothing when it cannot be read (``pacsvlm_database_up`` says why elsewhere)."""
        try:
            with engine_for(self.settings.database_url).connect() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                return shadow_metrics(connection)
        except SQLAlchemyError as exc:
            logger.warning("metrics: shadow metrics not read: %s", describe_error(exc))
            return []
