"""``pacs-vlm deliveries``: see where report documents went, and retry dead letters."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from integration.cli import console, fail, load_settings, operator

deliveries_app = typer.Typer(help="Deliveries of report documents to their destinations.", no_args_is_help=True)


@deliveries_app.command("list")
def list_command(
    state: Annotated[str | None, typer.Option(help="Only this state: pending, delivered or dead_letter.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Rows to show.")] = 50,
) -> None:
    """List deliveries, newest first, with attempts and the last error."""
    from integration.store.deliveries import list_deliveries
    from integration.store.session import session_scope
    from integration.store.tables import DeliveryState

    settings = load_settings()
    try:
        wanted = DeliveryState(state) if state is not None else None
    except ValueError:
        raise fail(f"unknown state {state!r}: use pending, delivered or dead_letter", 2) from None
    table = Table("id", "report version", "destination", "document", "state", "attempts", "last error")
    with session_scope(settings.database_url) as session:
        for row in list_deliveries(session, wanted, limit):
            table.add_row(
                str(row.id),
                row.subject,
                row.destination,
                row.document,
                row.state.value,
                str(row.attempts),
                Text(row.last_error or ""),  # error text may quote a peer's answer: never markup
            )
    console.print(table)


@deliveries_app.command("retry")
def retry_command(
    delivery_ids: Annotated[list[int] | None, typer.Argument(help="Delivery ids; omit with --dead-letters.")] = None,
    dead_letters: Annotated[bool, typer.Option("--dead-letters", help="Retry every dead-letter delivery.")] = False,
) -> None:
    """Make deliveries pending again with fresh attempts and send them (each audited ``delivery.retry``)."""
    from kombu.exceptions import OperationalError

    from integration.queue import send_deliver
    from integration.store.audit import add_event
    from integration.store.deliveries import retry_deliveries
    from integration.store.session import session_scope
    from integration.store.tables import utcnow

    if not delivery_ids and not dead_letters:
        raise fail("name delivery ids, or use --dead-letters", 2)
    settings = load_settings()
    with session_scope(settings.database_url) as session:
        ids = retry_deliveries(session, None if dead_letters and not delivery_ids else delivery_ids, utcnow())
        for delivery_id in ids:  # audited like the operations page's retry
            add_event(
                session,
                actor=operator(),
                action="delivery.retry",
                object_type="delivery",
                object_id=str(delivery_id),
                source="cli",
            )
    try:
        for delivery_id in ids:
            send_deliver(settings, delivery_id)
    except OperationalError:
        raise fail("the broker is unreachable: the deliveries are pending; retry when it is back") from None
    console.print(f"{len(ids)} deliveries queued again: {', '.join(map(str, ids)) or '-'}")
