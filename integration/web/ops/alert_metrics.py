"""Metrics of critical-finding alerts, read from the database at scrape time (part of ``GET /metrics``).

``pacsvlm_critical_alerts{state}`` (open is the number waiting for a person), ``pacsvlm_alert_notifications
{state}`` (dead letters mean a contact could not be reached).  The time from raised to acknowledged is the
stage histogram ``pacsvlm_stage_raised_to_acknowledged_seconds`` of ``stage_metrics.py``, by the model and
prompt version of the draft that raised the alert.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection, func, select

from integration.store.alert_tables import AlertNotification, AlertState, CriticalAlert, NotificationState


def _states(connection: Connection, column: Any, kind: type[StrEnum], name: str, documentation: str) -> Metric:
    counts = {
        kind(value).value: int(n) for value, n in connection.execute(select(column, func.count()).group_by(column))
    }
    gauge = GaugeMetricFamily(name, documentation, labels=["state"])
    for member in kind:
        gauge.add_metric([member.value], counts.get(member.value, 0))
    return gauge


def alert_metrics(connection: Connection) -> list[Metric]:
    """Return the alert metric families, from two aggregate queries on an open connection.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (its transaction is the caller's).

    Returns
    -------
    list of Metric
        Alerts by state and notifications by state.
    """
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
    ]
