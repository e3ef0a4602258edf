"""``GET /metrics``: Prometheus metrics read from the database (the source of truth) at scrape time.

Every process of a deployment (listener, workers, api) writes its states to the database, so the api
reports them all with a few aggregate queries per scrape; nothing is counted in memory, and a restart
loses nothing.  Queue depths come from the broker; a broker that cannot be reached gives ``-1`` and
``pacsvlm_broker_up 0`` instead of a failed scrape, and a database that cannot be reached gives
``pacsvlm_database_up 0`` and no database metrics.

Review quality per model and site comes from ``review_outcomes`` (one row per signed or rejected draft):
``pacsvlm_review_outcomes``, ``pacsvlm_review_findings`` (sums, which Prometheus can aggregate),
``pacsvlm_finding_acceptance_ratio`` and ``pacsvlm_signed_text_similarity_mean``.  The safety net's metrics
(acceptance by confidence band, consistency checks, critical matches, decoding paths) are collected beside
these by :mod:`integration.web.ops.safety_metrics`, the stage latencies and the alerting gauges by
:mod:`integration.web.ops.stage_metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from enum import StrEnum
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy import ColumnElement, Connection, Float, and_, case, cast, extract, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.queue import queue_depth, worker_queues
from integration.store.session import engine_for
from integration.store.tables import (
    AnalysisJob,
    Delivery,
    DeliveryState,
    Instance,
    JobState,
    Report,
    ReportRevision,
    ReportStatus,
    ReviewOutcome,
    RevisionStatus,
    Site,
    Study,
    StudyState,
)
from integration.web.ops.alert_metrics import alert_metrics
from integration.web.ops.health import describe_error, ping_broker, start_in_thread
from integration.web.ops.purged_added import PurgedRowsAdded
from integration.web.ops.safety_metrics import SafetyCollector
from integration.web.ops.shadow_metrics import ShadowCollector
from integration.web.ops.stage_metrics import StageCollector

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the analysis-duration histogram's buckets.
DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
#: Longest a scrape's database queries may run on PostgreSQL (milliseconds).
STATEMENT_TIMEOUT_MS = 5000
#: Seconds to reach the broker and to read one queue's depth.
BROKER_TIMEOUT_SECONDS = 2.0
#: The parts of a findings document a radiologist reviews: equal in draft and signed version = accepted unedited.
REVIEWED_CONTENT = ("findings", "impression", "limitations")

ACCEPTANCE_HELP = (
    "Fraction of signed report versions (report_revisions with status signed) whose findings list, impression "
    "and limitations are equal to those of the model's draft they sign (reports.findings), i.e. accepted "
    "without edits: pacsvlm_reports_signed_unedited_total / pacsvlm_reports_signed_total; NaN before any signature"
)


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    """SQL for the seconds from ``start`` to ``end`` (two UTC timestamp columns)."""
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return cast(extract("epoch", end) - extract("epoch", start), Float)


def _content(column: Any, key: str, dialect: str) -> ColumnElement[Any]:
    """SQL for one top-level member of a JSON column, comparable across rows."""
    if dialect == "postgresql":
        return cast(column, JSONB)[key]  # jsonb compares by value (json has no equality)
    return func.json_extract(column, f"$.{key}")


def _by_label(
    connection: Connection, column: Any, kind: type[StrEnum], name: str, documentation: str, label: str
) -> GaugeMetricFamily:
    """A gauge with one sample per member of ``kind`` (zero when no row has it)."""
    counts = {
        kind(value).value: int(n) for value, n in connection.execute(select(column, func.count()).group_by(column))
    }
    gauge = GaugeMetricFamily(name, documentation, labels=[label])
    for member in kind:
        gauge.add_metric([member.value], counts.get(member.value, 0))
    return gauge


def _job_durations(connection: Connection, dialect: str) -> HistogramMetricFamily:
    """Histogram of run time (started_at to finished_at) of done analysis jobs, from one aggregate query."""
    seconds = _seconds_between(AnalysisJob.started_at, AnalysisJob.finished_at, dialect)
    row = connection.execute(
        select(
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *(func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in DURATION_BUCKETS),
        ).where(
            AnalysisJob.state == JobState.DONE,
            AnalysisJob.started_at.is_not(None),
            AnalysisJob.finished_at.is_not(None),
        )
    ).one()
    count, total, *cumulative = row
    buckets = [(str(float(bound)), float(n)) for bound, n in zip(DURATION_BUCKETS, cumulative, strict=True)]
    return HistogramMetricFamily(
        "pacsvlm_analysis_job_duration_seconds",
        "Run time of done analysis jobs, from started_at to finished_at (all done jobs in the database)",
        buckets=[*buckets, ("+Inf", float(count))],
        sum_value=float(total),
    )


def _signatures(connection: Connection, dialect: str) -> list[Metric]:
    """Signed versions, those accepted without edits, and the acceptance rate."""
    unedited = and_(
        *(
            _content(ReportRevision.findings, key, dialect).is_not_distinct_from(
                _content(Report.findings, key, dialect)
            )
            for key in REVIEWED_CONTENT
        )
    )
    signed, accepted = connection.execute(
        select(func.count(), func.coalesce(func.sum(case((unedited, 1), else_=0)), 0))
        .select_from(ReportRevision)
        .join(Report, Report.id == ReportRevision.report_id)
        .where(ReportRevision.status == RevisionStatus.SIGNED)
    ).one()
    return [
        CounterMetricFamily("pacsvlm_reports_signed", "Signed report versions (report_revisions)", value=int(signed)),
        CounterMetricFamily(
            "pacsvlm_reports_signed_unedited",
            "Signed report versions whose findings, impression and limitations equal the model's draft",
            value=int(accepted),
        ),
        GaugeMetricFamily(
            "pacsvlm_draft_acceptance_ratio", ACCEPTANCE_HELP, value=int(accepted) / signed if signed else float("nan")
        ),
    ]


def _rejections(connection: Connection) -> Metric:
    """Rejected report versions (report_revisions with status rejected)."""
    rejected = connection.execute(
        select(func.count()).select_from(ReportRevision).where(ReportRevision.status == RevisionStatus.REJECTED)
    ).scalar_one()
    return CounterMetricFamily(
        "pacsvlm_reports_rejected", "Rejected report versions (report_revisions)", value=int(rejected)
    )


def _review_outcomes(connection: Connection) -> list[Metric]:
    """Review outcomes per model and site: counts, what became of the draft's findings, acceptance, similarity.

    One aggregate query over ``review_outcomes`` grouped by model id, site and outcome.  A rejected draft's
    findings count as not accepted whatever its row says; text similarity is averaged over signed outcomes
    only (a rejection has no signed text).
    """
    labels = ["model_id", "site"]
    outcomes = GaugeMetricFamily(
        "pacsvlm_review_outcomes",
        "Reviewed drafts (review_outcomes rows) by model, site and outcome (signed or rejected)",
        labels=[*labels, "outcome"],
    )
    findings = GaugeMetricFamily(
        "pacsvlm_review_findings",
        "Findings of reviewed drafts by model, site and fate: drafted (in the draft), accepted, edited, "
        "rejected, added (by the radiologist); a rejected draft's findings count as rejected",
        labels=[*labels, "fate"],
    )
    acceptance = GaugeMetricFamily(
        "pacsvlm_finding_acceptance_ratio",
        "Draft findings accepted unedited / draft findings of reviewed drafts (review_outcomes; rejected drafts "
        "accept none), per model and site; NaN before any draft finding was reviewed",
        labels=labels,
    )
    similarity = GaugeMetricFamily(
        "pacsvlm_signed_text_similarity_mean",
        "Mean text similarity of signed report to its draft (review_outcomes.text_similarity, 1.0 = unchanged), "
        "per model and site; NaN before any signature",
        labels=labels,
    )
    site = func.coalesce(Site.code, "none")
    rows = connection.execute(
        select(
            ReviewOutcome.model_id,
            site,
            ReviewOutcome.outcome,
            func.count(),
            *(
                func.coalesce(func.sum(column), 0)
                for column in (
                    ReviewOutcome.draft_findings,
                    ReviewOutcome.accepted,
                    ReviewOutcome.edited,
                    ReviewOutcome.rejected,
                    ReviewOutcome.added,
                )
            ),
            func.coalesce(func.sum(ReviewOutcome.text_similarity), 0.0),
        )
        .select_from(ReviewOutcome)
        .outerjoin(Site, Site.id == ReviewOutcome.site_id)
        .group_by(ReviewOutcome.model_id, site, ReviewOutcome.outcome)
        .order_by(ReviewOutcome.model_id, site, ReviewOutcome.outcome)
    ).all()
    fates = ("drafted", "accepted", "edited", "rejected", "added")
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for model_id, site_code, outcome, count, drafted, accepted, edited, rejected, added, similarity_sum in rows:
        key = (str(model_id), str(site_code))
        outcomes.add_metric([*key, str(outcome)], int(count))
        total = totals.setdefault(key, dict.fromkeys((*fates, "signed", "similarity_sum"), 0.0))
        if outcome == "rejected":
            accepted, edited, rejected = 0, 0, drafted
        else:
            total["signed"] += int(count)
            total["similarity_sum"] += float(similarity_sum)
        for fate, value in zip(fates, (drafted, accepted, edited, rejected, added), strict=True):
            total[fate] += int(value)
    for key, total in totals.items():
        for fate in fates:
            findings.add_metric([*key, fate], total[fate])
        acceptance.add_metric(list(key), total["accepted"] / total["drafted"] if total["drafted"] else float("nan"))
        similarity.add_metric(list(key), total["similarity_sum"] / total["signed"] if total["signed"] else float("nan"))
    return [outcomes, findings, acceptance, similarity]


def database_metrics(connection: Connection) -> list[Metric]:
    """Read every database metric with aggregate queries on one connection.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (its transaction is left for the caller to end).

    Returns
    -------
    list of Metric
        The metric families.
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
    instances = connection.execute(select(func.count()).select_from(Instance)).scalar_one()
    reports = _by_label(
        connection, Report.status, ReportStatus, "pacsvlm_reports", "Reports (model drafts) by status", "status"
    )
    return [
        CounterMetricFamily("pacsvlm_instances_received", "SOP instances stored", value=int(instances)),
        _by_label(connection, Study.state, StudyState, "pacsvlm_studies", "Studies by state", "state"),
        _by_label(connection, AnalysisJob.state, JobState, "pacsvlm_analysis_jobs", "Analysis jobs by state", "state"),
        _job_durations(connection, dialect),
        CounterMetricFamily(
            "pacsvlm_drafts_produced",
            "Draft reports the model produced (reports rows, any status)",
            value=sum(sample.value for sample in reports.samples),
        ),
        reports,
        *_signatures(connection, dialect),
        _rejections(connection),
        *_review_outcomes(connection),
        _by_label(connection, Delivery.state, DeliveryState, "pacsvlm_deliveries", "Deliveries by state", "state"),
        *alert_metrics(connection),
    ]


def queue_depths(settings: Settings, queues: Sequence[str]) -> tuple[bool, dict[str, int]]:
    """Ask the broker how many messages wait in each queue, giving up quickly.

    Parameters
    ----------
    settings : Settings
        The settings.
    queues : sequence of str
        Queue names.

    Returns
    -------
    tuple of (bool, dict of str to int)
        Whether the broker answered, and each queue's depth (``-1`` when it could not be read).
    """
    depths = dict.fromkeys(queues, -1)
    if not settings.broker_url.startswith("filesystem://"):
        try:
            start_in_thread(partial(ping_broker, settings, BROKER_TIMEOUT_SECONDS), "metrics-broker").result(
                timeout=BROKER_TIMEOUT_SECONDS + 0.5
            )
        except Exception as exc:
            logger.warning("metrics: broker unreachable: %s", describe_error(exc))
            return False, depths
    for queue in queues:
        try:
            future = start_in_thread(partial(queue_depth, settings, queue), f"metrics-queue-{queue}")
            depths[queue] = future.result(timeout=BROKER_TIMEOUT_SECONDS)
        except Exception as exc:
            logger.warning("metrics: depth of queue %s unknown: %s", queue, describe_error(exc))
    return True, depths


class OperationsCollector:
    """Collects pacs-vlm's operational metrics at scrape time (database states and queue depths).

    Parameters
    ----------
    settings : Settings
        The settings (database and broker to read).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        """Describe nothing in advance: registering must not query the database."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Query the database and the broker and return the metric families.

        Returns
        -------
        iterable of Metric
            The metric families of this scrape.
        """
        metrics: list[Metric] = []
        try:
            with engine_for(self.settings.database_url).connect() as connection:
                metrics = database_metrics(connection)
        except SQLAlchemyError as exc:
            logger.warning("metrics: database unreachable: %s", describe_error(exc))
        metrics.append(
            GaugeMetricFamily("pacsvlm_database_up", "1 when the database answered", value=int(bool(metrics)))
        )
        queues = list(dict.fromkeys(worker_queues(self.settings)))  # stat, analysis, delivery
        reachable, depths = queue_depths(self.settings, queues)
        metrics.append(GaugeMetricFamily("pacsvlm_broker_up", "1 when the broker answered", value=int(reachable)))
        depth = GaugeMetricFamily(
            "pacsvlm_queue_depth", "Messages waiting in a broker queue; -1 when it could not be read", labels=["queue"]
        )
        for queue, value in depths.items():
            depth.add_metric([queue], value)
        metrics.append(depth)
        return metrics


def metrics_registry(settings: Settings) -> CollectorRegistry:
    """Return a fresh registry with the operations collector and this process's resource usage.

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    prometheus_client.CollectorRegistry
        The registry (one per application, never the global one).
    """
    registry = CollectorRegistry(auto_describe=False)
    # counters derived from rows get back what purges removed (integration/web/ops/purge_totals.py)
    # (shadow mode's candidates: integration/web/ops/shadow_metrics.py)
    collectors = (OperationsCollector(settings), SafetyCollector(settings), StageCollector(settings))
    for collector in (*collectors, ShadowCollector(settings)):
        registry.register(PurgedRowsAdded(collector, settings))
    ProcessCollector(registry=registry)
    return registry


def metrics_router(settings: Settings) -> APIRouter:
    """Return the router of ``GET /metrics`` with its own registry.

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    fastapi.APIRouter
        The router.
    """
    registry = metrics_registry(settings)
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus text format (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type, headers={"Cache-Control": "no-store"})

    return router
