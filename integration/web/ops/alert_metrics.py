"""Metrics of critical-finding alerts, read from the database at scrape time (part of ``GET /metrics``).

``pacsvlm_critical_alerts{state}`` (open is the number waiting for a person), ``pacsvlm_alert_notifications
{state}`` (dead letters mean a contact could not be reached) and the histogram
``pacsvlm_critical_alert_acknowledge_seconds`` (raised to acknowledged, every acknowledged alert).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import ColumnElement, Connection, Float, case, cast, extract, func, select

from integration.store.alert_tables import AlertNotification, AlertState, CriticalAlert, NotificationState

#: Upper bounds (seconds) of the acknowledgement-latency histogram's buckets.
ACKNOWLEDGE_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)


def _seconds(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return cast(extract("epoch", end) - extract("epoch", start), Float)


def _states(connection: Connection, column: Any, kind: type[StrEnum], name: str, documentation: str) -> Metric:
    counts = {
        kind(value).value: int(n) for value, n in connection.execute(select(column, func.count()).group_by(column))
    }
    gauge = GaugeMetricFamily(name, documentation, labels=["state"])
    for member in kind:
        gauge.add_metric([member.value], counts.get(member.value, 0))
    return gauge


def alert_metrics(connection: Connection, dialect: str) -> list[Metric]:
    """Return the alert metric families, from three aggregate queries on an open connection.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (its transaction is the caller's).
    dialect : str
        ``postgresql`` or ``sqlite``.

    Returns
    -------
    list of Metric
        Alerts by state, notifications by state, the acknowledgement latency histogram.
    """
    seconds = _seconds(CriticalAlert.raised_at, CriticalAlert.acknowledged_at, dialect)
    count, total, *cumulative = connection.execute(
        select(
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *(func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in ACKNOWLEDGE_BUCKETS),
        ).where(CriticalAlert.acknowledged_at.is_not(None))
    ).one()
    buckets = [(str(bound), float(n)) for bound, n in zip(ACKNOWLEDGE_BUCKETS, cumulative, strict=True)]
    return [
        _states(
            connection,
            CriticalAlert.state,
            AlertState,
            "pacsvlm_critical_alerts",
            "Critical-finding alerts by state (open: waiting for a person to acknowledge)",
        ),
        _states(
            connection,
            AlertNotification.state,
            NotificationState,
            "pacsvlm_alert_notifications",
            "Critical-finding notifications by state (dead_letter: the contact could not be reached)",
        ),
        HistogramMetricFamily(
            "pacsvlm_critical_alert_acknowledge_seconds",
            "Time from a critical-finding alert's opening to its acknowledgement (every acknowledged alert)",
            buckets=[*buckets, ("+Inf", float(count))],
            sum_value=float(total),
        ),
    ]
