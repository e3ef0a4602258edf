"""Prometheus metrics of the safety net, read from the database at scrape time (beside ``metrics.py``).

* ``pacsvlm_confidence_findings`` and ``pacsvlm_confidence_acceptance_ratio``: reviewed draft findings with a
  confidence score per model id, revision, prompt version and band (low/medium/high from the settings'
  ``confidence_low`` and ``confidence_high``), what became of them and the share accepted unedited
  (:mod:`integration.reports.confidence_bands`), so a hospital can see whether the score means anything
  for its model.  The score is the model's confidence in its wording, not a probability of being right.
* ``pacsvlm_draft_checks_total`` (by kind), ``pacsvlm_draft_critical_matches_total`` (by category code) and
  the drafts that have any: the consistency checks and critical matches stored in the drafts' findings
  documents (every draft, primary or second opinion, whatever became of it).
* ``pacsvlm_drafts_by_decoding_total``: drafts by the decoding path that produced them.

A collector of its own: a draft whose JSON a query cannot read costs these families (logged), never the
operational ones or ``pacsvlm_database_up``.  Label sets are bounded: bands and check kinds are fixed, the
decoding paths are the known ones (else ``other``), models and prompts are those deployed, and category codes
are the configured categories' (at most :data:`MAX_CATEGORY_LABELS`, the rest counted as ``other``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.draft_checks import CHECK_KINDS
from integration.reports.confidence_bands import FATES, acceptance_by_band
from integration.store.session import engine_for
from integration.web.ops.health import describe_error

logger = logging.getLogger(__name__)

#: Longest these queries may run on PostgreSQL (milliseconds).
STATEMENT_TIMEOUT_MS = 5000
#: The decoding paths a draft records (``models.backend.Decoding``); anything else is counted as ``other``.
DECODINGS = ("grammar", "response_format", "free", "free-fallback")
#: Most critical category codes given a label of their own (the most frequent); the rest are ``other``.
MAX_CATEGORY_LABELS = 50

# A member of each element of a JSON array of the draft (reports.findings -> <array>), one row per element.
_MEMBERS = {
    "postgresql": """
        SELECT r.id AS report_id, e.value ->> '{member}' AS value
        FROM reports r CROSS JOIN LATERAL json_array_elements(
            CASE WHEN json_typeof(r.findings -> '{array}') = 'array' THEN r.findings -> '{array}' ELSE '[]'::json END
        ) AS e(value)""",
    "sqlite": """
        SELECT r.id AS report_id, CASE WHEN e.type = 'object' THEN json_extract(e.value, '$.{member}') END AS value
        FROM reports r, json_each(
            CASE WHEN json_type(r.findings, '$.{array}') = 'array'
                 THEN json_extract(r.findings, '$.{array}') ELSE '[]' END
        ) AS e""",
}
_DECODING = {
    "postgresql": "CASE WHEN json_typeof(findings -> 'decoding') = 'string' THEN findings ->> 'decoding' END",
    "sqlite": "CASE WHEN json_type(findings, '$.decoding') = 'text' THEN json_extract(findings, '$.decoding') END",
}


def _dialect(connection: Connection) -> str:
    return "postgresql" if connection.dialect.name == "postgresql" else "sqlite"


def _members(connection: Connection, array: str, member: str) -> tuple[Counter[str], int]:
    """Count a member's values over the elements of a draft array, and the drafts with any element."""
    rows = f"({_MEMBERS[_dialect(connection)].format(array=array, member=member)}) AS elements"
    counts = Counter(
        {
            str(value): int(n)
            for value, n in connection.execute(
                text(f"SELECT value, count(*) FROM {rows} WHERE value IS NOT NULL GROUP BY value")
            )
        }
    )
    drafts = connection.execute(text(f"SELECT count(DISTINCT report_id) FROM {rows}")).scalar_one()
    return counts, int(drafts)


def check_metrics(connection: Connection) -> list[Metric]:
    """Consistency checks by kind and critical matches by category in the drafts, and the drafts with any.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (only read).

    Returns
    -------
    list of Metric
        ``pacsvlm_draft_checks_total{kind}`` (every kind, zero when none), ``pacsvlm_drafts_with_checks_total``,
        ``pacsvlm_draft_critical_matches_total{category}``, ``pacsvlm_drafts_with_critical_matches_total``.
    """
    kinds, checked = _members(connection, "checks", "kind")
    checks = CounterMetricFamily(
        "pacsvlm_draft_checks",
        "Consistency checks (draft vs the study's header) stored with the drafts, by kind",
        labels=["kind"],
    )
    for kind in CHECK_KINDS:
        checks.add_metric([kind], kinds.get(kind, 0))
    codes, critical = _members(connection, "critical", "code")
    matches = CounterMetricFamily(
        "pacsvlm_draft_critical_matches",
        "Draft findings that matched a critical (actionable) result category, by category code "
        "(model-urgent: the model's urgency field with no category matched)",
        labels=["category"],
    )
    ranked = codes.most_common()
    for code, n in ranked[:MAX_CATEGORY_LABELS]:
        matches.add_metric([code], n)
    if rest := sum(n for _, n in ranked[MAX_CATEGORY_LABELS:]):
        matches.add_metric(["other"], rest)
    return [
        checks,
        CounterMetricFamily("pacsvlm_drafts_with_checks", "Drafts with at least one consistency check", value=checked),
        matches,
        CounterMetricFamily(
            "pacsvlm_drafts_with_critical_matches", "Drafts with at least one critical match", value=critical
        ),
    ]


def decoding_metrics(connection: Connection) -> Metric:
    """Drafts by decoding path (``unrecorded`` for drafts that name none, ``other`` for an unknown one)."""
    path = _DECODING[_dialect(connection)]
    counts: Counter[str] = Counter()
    for value, n in connection.execute(text(f"SELECT {path} AS path, count(*) FROM reports GROUP BY path")):
        counts["unrecorded" if value is None else value if value in DECODINGS else "other"] += int(n)
    metric = CounterMetricFamily(
        "pacsvlm_drafts_by_decoding",
        "Drafts by decoding path: grammar (in-process, schema-bound), response_format (server, schema-bound), "
        "free, free-fallback (server refused the schema); unrecorded before the path was recorded",
        labels=["decoding"],
    )
    for name in (*DECODINGS, "other", "unrecorded"):
        if name in counts or name in DECODINGS:
            metric.add_metric([name], counts.get(name, 0))
    return metric


def confidence_metrics(connection: Connection, low: float, high: float) -> list[Metric]:
    """Reviewed draft findings with a score by band and fate, and the acceptance rate per band.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (only read).
    low, high : float
        The band thresholds.

    Returns
    -------
    list of Metric
        ``pacsvlm_confidence_findings{model_id, model_revision, prompt_version, band, fate}`` (fate: reviewed,
        accepted, edited, rejected) and ``pacsvlm_confidence_acceptance_ratio{..., band}`` (NaN when none).
    """
    labels = ["model_id", "model_revision", "prompt_version", "band"]
    findings = GaugeMetricFamily(
        "pacsvlm_confidence_findings",
        "Reviewed draft findings with a confidence score (the model's confidence in its wording, not a probability "
        f"of being right), by band (low < {low:g} <= medium < {high:g} <= high) and fate; a report's first review "
        "only; a rejected draft's findings count as rejected",
        labels=[*labels, "fate"],
    )
    acceptance = GaugeMetricFamily(
        "pacsvlm_confidence_acceptance_ratio",
        "Draft findings accepted unedited / reviewed, by confidence band; NaN before any was reviewed",
        labels=labels,
    )
    for stats in acceptance_by_band(connection, low, high):
        key = [stats.model_id, stats.model_revision, stats.prompt_version, stats.band]
        findings.add_metric([*key, "reviewed"], stats.reviewed)
        for fate in FATES:
            findings.add_metric([*key, fate], getattr(stats, fate))
        rate = stats.acceptance_rate
        acceptance.add_metric(key, float("nan") if rate is None else rate)
    return [findings, acceptance]


class SafetyCollector:
    """Collects the safety net's metrics at scrape time.

    Parameters
    ----------
    settings : Settings
        The database and the confidence band thresholds.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        """Describe nothing in advance: registering must not query the database."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Query the database; nothing when it cannot be read (``pacsvlm_database_up`` says why elsewhere)."""
        settings = self.settings
        try:
            with engine_for(settings.database_url).connect() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                return [
                    *confidence_metrics(connection, settings.confidence_low, settings.confidence_high),
                    *check_metrics(connection),
                    decoding_metrics(connection),
                ]
        except SQLAlchemyError as exc:
            logger.warning("metrics: safety metrics not read: %s", describe_error(exc))
            return []
