"""``pacs-vlm alerts``: see critical-finding alerts and acknowledge one (who and when are recorded and audited)."""

from __future__ import annotations

from typing import Annotated

import typer

from integration.cli import console, fail, load_settings

alerts_app = typer.Typer(help="Critical-finding alerts: list them, acknowledge one.", no_args_is_help=True)


@alerts_app.command("list")
def list_command(
    open_only: Annotated[bool, typer.Option("--open", help="Only alerts nobody acknowledged yet.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Rows to show.")] = 50,
) -> None:
    """List alerts, newest first, one line each: state, level, categories, site, study, who acknowledged and when."""
    from integration.store.alert_tables import AlertState
    from integration.store.alerts import alerts_query
    from integration.store.session import session_scope

    settings = load_settings()
    shown = 0
    with session_scope(settings.database_url) as session:
        query = alerts_query(AlertState.OPEN if open_only else None).limit(limit)
        for alert, study_uid, site in session.execute(query):
            shown += 1
            parts = [
                f"alert {alert.id}",
                AlertState(alert.state).value,
                f"level {alert.level}",
                ", ".join(alert.labels or ()),
                f"site {site or '-'}",
                f"report {alert.report_id}",
                f"study {study_uid}",
                f"raised {alert.raised_at:%Y-%m-%d %H:%M} UTC",
            ]
            if alert.acknowledged_at:
                parts.append(f"acknowledged by {alert.acknowledged_by} at {alert.acknowledged_at:%Y-%m-%d %H:%M} UTC")
            elif alert.due_at:
                parts.append(f"escalates {alert.due_at:%Y-%m-%d %H:%M} UTC")
            # one line per alert, never wrapped (grep-able); labels and names are text, never markup
            console.print(" | ".join(parts), markup=False, highlight=False, soft_wrap=True)
    if not shown:
        console.print("no open alerts" if open_only else "no alerts", markup=False)


@alerts_app.command("ack")
def ack_command(
    alert_id: Annotated[int, typer.Argument(min=1, help="The alert's id (pacs-vlm alerts list).")],
    by: Annotated[str, typer.Option("--by", help="Who acknowledges it (recorded and audited).")],
) -> None:
    """Acknowledge an alert: records who and when, cancels pending notifications and stops escalation."""
    from integration.store.alerts import AlertClosed, acknowledge_alert
    from integration.store.session import session_scope
    from integration.store.tables import utcnow

    name = " ".join(by.split())
    if not name or len(name) > 128:
        raise fail("--by needs a name of 1 to 128 characters", 2)
    settings = load_settings()
    try:
        with session_scope(settings.database_url) as session:
            done = acknowledge_alert(session, alert_id, name, utcnow(), source="cli", via="cli")
            if done is None:
                raise fail(f"no alert {alert_id} (see pacs-vlm alerts list)")
            who, when, newly = done.alert.acknowledged_by, done.alert.acknowledged_at, done.newly
    except AlertClosed as exc:
        raise fail(str(exc)) from None
    moment = f"{when:%Y-%m-%d %H:%M:%S} UTC" if when else "?"
    if newly:
        console.print(f"alert {alert_id} acknowledged by {who} at {moment}", markup=False)
    else:
        console.print(f"alert {alert_id} was acknowledged already, by {who} at {moment}", markup=False)
