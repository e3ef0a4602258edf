"""Tables of critical-finding alerts: one alert per draft with a critical finding, and its notifications.

A :class:`CriticalAlert` is opened when a draft's findings match a critical (actionable) result category
(:mod:`integration.alerts.raise_alerts`).  It names the categories (codes and labels, never the finding's
text or patient data), the study and its site, the escalation step it has reached (``level``), when the
notified contact must acknowledge it (``due_at``), and who acknowledged it and when.  Each contact told of
it is an :class:`AlertNotification`, sent by the worker with retries and a dead letter like a delivery.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import Base, UTCDateTime, _enum, utcnow


class AlertState(enum.StrEnum):
    """Where a critical-finding alert stands."""

    #: Raised and not yet acknowledged: notified contacts are escalated when ``due_at`` passes.
    OPEN = "open"
    #: A person acknowledged it (``acknowledged_by``, ``acknowledged_at``): no more notifications.
    ACKNOWLEDGED = "acknowledged"
    #: Ended without an acknowledgement: its draft was superseded or withdrawn (``closed_reason`` says which).
    CLOSED = "closed"


class NotificationState(enum.StrEnum):
    """Where one notification of an alert to one contact stands."""

    PENDING = "pending"
    SENT = "sent"
    #: Every attempt failed (``alert_max_attempts``): the last error is kept; escalation goes on.
    DEAD_LETTER = "dead_letter"
    #: Not sent: the alert was acknowledged or closed before it left.
    CANCELLED = "cancelled"


class CriticalAlert(Base):
    """One draft's critical findings, waiting for a person to acknowledge them.

    ``level`` is the escalation step: 0 is the first contact of the chain that covers the study's site, 1 the
    next ...; past the end of the chain the last contact is notified again at each step.
    """

    __tablename__ = "critical_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"), index=True)
    #: The matched categories' codes and labels, in the order of the draft's matches (no patient data).
    codes: Mapped[list[str]] = mapped_column(JSON, default=list)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[AlertState] = mapped_column(_enum(AlertState, "alert_state"), default=AlertState.OPEN)
    level: Mapped[int] = mapped_column(Integer, default=0)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: When the next contact is notified unless someone acknowledges first; None: no contact to escalate to.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Why a closed alert was closed (no patient data).
    closed_reason: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ix_critical_alerts_state_due_at", "state", "due_at"),)


class AlertNotification(Base):
    """One alert told to one contact (webhook, e-mail or HL7), with its attempts like a delivery's."""

    __tablename__ = "alert_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("critical_alerts.id", ondelete="CASCADE"), index=True)
    #: The contact's name in ``alert_contacts`` and its channel when the notification was made.
    contact: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(8))
    level: Mapped[int] = mapped_column(Integer)
    state: Mapped[NotificationState] = mapped_column(
        _enum(NotificationState, "notification_state"), default=NotificationState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("alert_id", "level", name="uq_alert_notifications_alert_id_level"),
        Index("ix_alert_notifications_state_next_attempt_at", "state", "next_attempt_at"),
    )
