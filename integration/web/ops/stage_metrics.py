"""Stage latencies and the alerting gauges of ``GET /metrics``, read from the database at scrape time.

Why: a PACS administrator must see where a study waits (still receiving, waiting for the broker, waiting
for the model, waiting for a radiologist, a critical finding waiting for a person) and be paged when work
stops moving.  Like :mod:`integration.web.ops.metrics`, everything comes from the database, the one source
of truth that every process (listener, workers, api) writes: any api process answers the same, and a restart
loses nothing.

Stage histograms (seconds), one per step of the flow, each from one aggregate query:

* ``pacsvlm_stage_receive_to_stable_seconds``: a study's first instance (``studies.first_received_at``) to
  its first primary job (``analysis_jobs.created_at``, written when the study became stable);
* ``pacsvlm_stage_stable_to_queued_seconds``: a job's row to its message on the broker (``sent_at``, the
  last send when a lost message was re-sent);
* ``pacsvlm_stage_queued_to_drafted_seconds``: the message on the broker to the model's draft
  (``reports.created_at``), by ``model_id``, ``model_revision`` and ``prompt_version``;
* ``pacsvlm_stage_drafted_to_signed_seconds``: the draft to its first signed version, same labels;
* ``pacsvlm_stage_raised_to_acknowledged_seconds``: a critical-finding alert's opening to its
  acknowledgement, labelled by the draft that raised it.

The buckets are cumulative counts over every row in the database, the way the analysis-duration and
acknowledgement histograms (and every ``_total`` of ``/metrics``) already are: a finished row never changes
its timestamps, so the counts only grow and ``rate()``/``histogram_quantile()`` work as on any Prometheus
histogram.  A window such as "the last seven days" was not chosen: its counts would fall at every scrape as
rows age out, which Prometheus reads as counter resets.  The one thing that lowers them is the retention
purge deleting a study's rows: Prometheus reads that drop as one counter reset, so a ``rate()`` window
holding a purge overstates that window (the dashboard and alert rules use ``rate`` over short windows).

Labels are bounded: model labels are those of the :data:`MAX_MODEL_LABELS` models (id, revision, prompt
version) that drafted most recently; older ones are added together as ``other``.

Gauges for the alert rules in ``deploy/prometheus/alerts.yml``: the newest draft's time, the oldest queued
job's and the oldest open critical alert's time (no sample when there is none), and the instance store's
free bytes beside ``PACSVLM_MIN_FREE_BYTES`` (the store is read even when the database is not).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import ColumnElement, Connection, Float, Select, case, cast, extract, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.intake.space import store_space
from integration.store.alert_tables import AlertState, CriticalAlert
from integration.store.session import engine_for
from integration.store.tables import AnalysisJob, JobState, Report, ReportRevision, RevisionStatus, Study
from integration.web.ops.health import describe_error

logger = logging.getLogger(__name__)

#: Longest these queries may run on PostgreSQL (milliseconds).
STATEMENT_TIMEOUT_MS = 5000
#: Most (model id, revision, prompt version) label sets of their own, the most recently drafting first.
MAX_MODEL_LABELS = 20
#: The label set the older models are added together under.
OTHER_MODEL = ("other", "other", "other")
MODEL_LABELS = ["model_id", "model_revision", "prompt_version"]

#: Bucket upper bounds (seconds) per stage: the idle timer (30 s default) dominates receiving, the outbox
#: sends within a second, the model takes minutes, a radiologist minutes to days.
RECEIVE_BUCKETS = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
QUEUE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
DRAFT_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0)
SIGN_BUCKETS = (300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 259200.0, 604800.0)
ACKNOWLEDGE_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)


def _seconds(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    """SQL for the seconds from ``start`` to ``end`` (two UTC timestamp columns)."""
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return cast(extract("epoch", end) - extract("epoch", start), Float)


def _aggregates(seconds: ColumnElement[float], buckets: Sequence[float]) -> list[ColumnElement[Any]]:
    """Count, sum and the cumulative count at or below each bound."""
    return [
        func.count(),
        func.coalesce(func.sum(seconds), 0.0),
        *(func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in buckets),
    ]


class _Histogram:
    """Accumulates rows of ``(count, sum, cumulative...)`` per label set into one histogram family."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.buckets, self.labels = name, documentation, buckets, list(labels)
        self.totals: dict[tuple[str, ...], list[float]] = {}

    def add(self, key: tuple[str, ...], row: Sequence[Any]) -> None:
        total = self.totals.setdefault(key, [0.0] * (len(self.buckets) + 2))
        for index, value in enumerate(row):
            total[index] += float(value or 0)

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, (count, total, *cumulative) in sorted(self.totals.items()):
            buckets = [(str(bound), n) for bound, n in zip(self.buckets, cumulative, strict=True)]
            family.add_metric(list(key), [*buckets, ("+Inf", count)], total)
        return family


def recent_models(connection: Connection, limit: int | None = None) -> set[tuple[str, str, str]]:
    """The (model id, revision, prompt version) of the ``limit`` (:data:`MAX_MODEL_LABELS`) latest drafting."""
    rows = connection.execute(
        select(Report.model_id, Report.model_revision, Report.prompt_version)
        .where(Report.ai_generated.is_(True))
        .group_by(Report.model_id, Report.model_revision, Report.prompt_version)
        .order_by(func.max(Report.created_at).desc(), Report.model_id, Report.model_revision, Report.prompt_version)
        .limit(MAX_MODEL_LABELS if limit is None else limit)
    ).all()
    return {(str(a), str(b), str(c)) for a, b, c in rows}


def _by_model(
    connection: Connection, query: Select[Any], histogram: _Histogram, kept: set[tuple[str, str, str]]
) -> HistogramMetricFamily:
    """Run a query whose first three columns are the model labels; models not kept count as ``other``."""
    for model_id, revision, prompt, *row in connection.execute(query):
        key = (str(model_id), str(revision), str(prompt))
        histogram.add(key if key in kept else OTHER_MODEL, row)
    return histogram.family()


def stage_histograms(connection: Connection) -> list[Metric]:
    """The five stage-latency histograms, one aggregate query each.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (only read).

    Returns
    -------
    list of Metric
        The histogram families (see the module's description).
    """
    dialect = connection.dialect.name
    first_job = (
        select(AnalysisJob.study_id, func.min(AnalysisJob.created_at).label("at"))
        .where(AnalysisJob.purpose == "primary")
        .group_by(AnalysisJob.study_id)
        .subquery()
    )
    receiving = _Histogram(
        "pacsvlm_stage_receive_to_stable_seconds",
        "A study's first instance received to the study stable (its first primary job), every such study",
        RECEIVE_BUCKETS,
    )
    receiving.add(
        (),
        connection.execute(
            select(*_aggregates(_seconds(Study.first_received_at, first_job.c.at, dialect), RECEIVE_BUCKETS))
            .select_from(first_job)
            .join(Study, Study.id == first_job.c.study_id)
        ).one(),
    )
    queueing = _Histogram(
        "pacsvlm_stage_stable_to_queued_seconds",
        "An analysis job's row (the study stable, or a retry or second opinion asked for) to its message on the "
        "broker (the last send when a lost message was re-sent), every sent job",
        QUEUE_BUCKETS,
    )
    queueing.add(
        (),
        connection.execute(
            select(*_aggregates(_seconds(AnalysisJob.created_at, AnalysisJob.sent_at, dialect), QUEUE_BUCKETS)).where(
                AnalysisJob.sent_at.is_not(None)
            )
        ).one(),
    )
    kept = recent_models(connection)
    model = (Report.model_id, Report.model_revision, Report.prompt_version)
    drafted = select(*model, *_aggregates(_seconds(AnalysisJob.sent_at, Report.created_at, dialect), DRAFT_BUCKETS))
    drafted = (
        drafted.select_from(Report)
        .join(AnalysisJob, AnalysisJob.id == Report.job_id)
        .where(Report.ai_generated.is_(True), AnalysisJob.sent_at.is_not(None))
        .group_by(*model)
    )
    first_signature = (
        select(ReportRevision.report_id, func.min(ReportRevision.created_at).label("at"))
        .where(ReportRevision.status == RevisionStatus.SIGNED)
        .group_by(ReportRevision.report_id)
        .subquery()
    )
    signed = (
        select(*model, *_aggregates(_seconds(Report.created_at, first_signature.c.at, dialect), SIGN_BUCKETS))
        .select_from(first_signature)
        .join(Report, Report.id == first_signature.c.report_id)
        .where(Report.ai_generated.is_(True))
        .group_by(*model)
    )
    acknowledged = (
        select(
            *model,
            *_aggregates(
                _seconds(CriticalAlert.raised_at, CriticalAlert.acknowledged_at, dialect), ACKNOWLEDGE_BUCKETS
            ),
        )
        .select_from(CriticalAlert)
        .join(Report, Report.id == CriticalAlert.report_id)
        .where(CriticalAlert.acknowledged_at.is_not(None))
        .group_by(*model)
    )
    return [
        receiving.family(),
        queueing.family(),
        _by_model(
            connection,
            drafted,
            _Histogram(
                "pacsvlm_stage_queued_to_drafted_seconds",
                "An analysis job's message on the broker to the model's draft, by model and prompt version",
                DRAFT_BUCKETS,
                MODEL_LABELS,
            ),
            kept,
        ),
        _by_model(
            connection,
            signed,
            _Histogram(
                "pacsvlm_stage_drafted_to_signed_seconds",
                "The model's draft to its first signed version, by model and prompt version",
                SIGN_BUCKETS,
                MODEL_LABELS,
            ),
            kept,
        ),
        _by_model(
            connection,
            acknowledged,
            _Histogram(
                "pacsvlm_stage_raised_to_acknowledged_seconds",
                "A critical-finding alert's opening to its acknowledgement by a person, by the model and prompt "
                "version of the draft that raised it",
                ACKNOWLEDGE_BUCKETS,
                MODEL_LABELS,
            ),
            kept,
        ),
    ]


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _optional_gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """A gauge without a sample when there is no value (an alert on it then stays quiet)."""
    gauge = GaugeMetricFamily(name, documentation)
    if value is not None:
        gauge.add_metric([], value)
    return gauge


def progress_gauges(connection: Connection) -> list[Metric]:
    """The newest draft, the oldest queued job and the oldest open critical alert (Unix seconds).

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (only read).

    Returns
    -------
    list of Metric
        ``pacsvlm_last_draft_timestamp_seconds`` (0 before any draft),
        ``pacsvlm_oldest_queued_job_timestamp_seconds`` and
        ``pacsvlm_oldest_open_critical_alert_timestamp_seconds`` (no sample when none).
    """
    newest = connection.execute(select(func.max(Report.created_at)).where(Report.ai_generated.is_(True))).scalar()
    oldest_job = connection.execute(
        select(func.min(AnalysisJob.created_at)).where(AnalysisJob.state == JobState.QUEUED)
    ).scalar()
    oldest_alert = connection.execute(
        select(func.min(CriticalAlert.raised_at)).where(CriticalAlert.state == AlertState.OPEN)
    ).scalar()
    return [
        GaugeMetricFamily(
            "pacsvlm_last_draft_timestamp_seconds",
            "When the model last drafted a report (newest reports.created_at, Unix seconds; 0 before any draft)",
            value=_timestamp(_aware(newest)) or 0.0,
        ),
        _optional_gauge(
            "pacsvlm_oldest_queued_job_timestamp_seconds",
            "When the oldest analysis job still queued was created (Unix seconds; no sample when none waits)",
            _timestamp(_aware(oldest_job)),
        ),
        _optional_gauge(
            "pacsvlm_oldest_open_critical_alert_timestamp_seconds",
            "When the oldest critical-finding alert still unacknowledged was raised (Unix seconds; no sample "
            "when none is open)",
            _timestamp(_aware(oldest_alert)),
        ),
    ]


def _aware(value: Any) -> datetime | None:
    """An aggregate's timestamp as an aware UTC datetime, whatever the driver returned."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def disk_gauges(settings: Settings) -> list[Metric]:
    """Free bytes of the instance store's file system and the minimum below which instances are refused."""
    free = GaugeMetricFamily(
        "pacsvlm_store_free_bytes",
        "Free bytes of the instance store's file system (no sample when the folder is missing)",
    )
    root = settings.instance_root
    if root.is_dir():
        free.add_metric([], float(store_space(settings).free_bytes()))
    return [
        free,
        GaugeMetricFamily(
            "pacsvlm_store_purge_free_bytes",
            "Below this much free space the listener purges eligible studies (disk pressure)",
            value=float(settings.purge_mark_bytes),
        ),
        GaugeMetricFamily(
            "pacsvlm_store_min_free_bytes",
            "PACSVLM_MIN_FREE_BYTES: below this much free space every C-STORE and upload is refused (0: no check)",
            value=float(settings.min_free_bytes),
        ),
    ]


class StageCollector:
    """Collects the stage latencies and the alerting gauges at scrape time.

    Parameters
    ----------
    settings : Settings
        The database and the instance store.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        """Describe nothing in advance: registering must not query the database."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Query the database (nothing from it when it cannot be read) and the instance store."""
        metrics: list[Metric] = []
        try:
            with engine_for(self.settings.database_url).connect() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                metrics = [*stage_histograms(connection), *progress_gauges(connection)]
        except SQLAlchemyError as exc:
            logger.warning("metrics: stage metrics not read: %s", describe_error(exc))
        try:
            metrics.extend(disk_gauges(self.settings))
        except OSError as exc:
            logger.warning("metrics: instance store not read: %s", describe_error(exc))
        return metrics
