"""``pacs-vlm orders``: the RIS orders received (HL7 and FHIR), and one accession number's history of controls.

Why: when a radiologist asks "why was this study not drafted?" or "where is the indication?", the answer is
the order's history (which control came when, from whom, what it changed) and the studies it linked.
Patient data is printed to the operator's terminal, as ``studies`` does, never logged; every value is
printed as text, never as console markup.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from integration.cli import fail, load_settings

orders_app = typer.Typer(help="RIS orders received over HL7 and FHIR, with their history.", no_args_is_help=True)

_STATUSES = ("scheduled", "cancelled", "discontinued")


def _when(moment: object) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if hasattr(moment, "strftime") else ""


@orders_app.command("list")
def list_command(
    accession: Annotated[str | None, typer.Option(help="Only orders with this accession number.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status: scheduled, cancelled or discontinued.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Rows to show.")] = 50,
) -> None:
    """List orders, most recently changed first."""
    from sqlalchemy import select

    from integration.store.order_tables import Order
    from integration.store.session import session_scope
    from integration.store.tables import Site

    if status is not None and status not in _STATUSES:
        raise fail(f"unknown status {status!r}: use {', '.join(_STATUSES)}", 2)
    settings = load_settings()
    query = select(Order, Site.code).outerjoin(Site, Order.site_id == Site.id)
    if accession is not None:
        query = query.where(Order.accession_number == accession.strip())
    if status is not None:
        query = query.where(Order.status == status)
    table = Table("id", "accession", "patient ID", "priority", "status", "modality", "procedure", "source", "site")
    table.add_column("updated")
    with session_scope(settings.database_url) as session:
        for order, site in session.execute(query.order_by(Order.updated_at.desc(), Order.id.desc()).limit(limit)):
            table.add_row(
                str(order.id),
                Text(order.accession_number),
                Text(order.patient_id + (f" ({order.issuer_of_patient_id})" if order.issuer_of_patient_id else "")),
                order.priority,
                order.status,
                Text(order.modality or ""),
                Text(order.procedure_text or order.procedure_code or ""),
                order.source,
                Text(site or ""),
                _when(order.updated_at),
            )
    Console().print(table)  # on stdout, as wide as the terminal (or COLUMNS) of this run


@orders_app.command("show")
def show_command(
    accession: Annotated[str, typer.Argument(help="The accession number.")],
) -> None:
    """Show the orders with this accession number: their fields, history of controls, and linked studies."""
    from sqlalchemy import select

    from integration.store.order_tables import Order, OrderEvent
    from integration.store.session import session_scope
    from integration.store.tables import Site, Study

    out = Console()
    settings = load_settings()
    with session_scope(settings.database_url) as session:
        orders = session.scalars(
            select(Order).where(Order.accession_number == accession.strip()).order_by(Order.id)
        ).all()
        if not orders:
            raise fail("no order has this accession number (see 'pacs-vlm orders list')")
        for order in orders:
            site = session.scalar(select(Site.code).where(Site.id == order.site_id)) if order.site_id else None
            fields = Table.grid(padding=(0, 2))
            fields.add_column(style="bold")
            fields.add_column()
            for label, value in (
                ("order", str(order.id)),
                ("accession", order.accession_number),
                ("patient ID", order.patient_id),
                ("issuer", order.issuer_of_patient_id or "-"),
                ("status", order.status),
                ("priority", order.priority),
                ("procedure", " ".join(v for v in (order.procedure_code, order.procedure_text) if v) or "-"),
                ("indication", order.indication or "-"),
                ("ordering provider", order.ordering_provider or "-"),
                ("modality", order.modality or "-"),
                ("scheduled", _when(order.scheduled_at) or "-"),
                ("placer / filler", f"{order.placer_order_number or '-'} / {order.filler_order_number or '-'}"),
                ("source", f"{order.source} from {order.sender}"),
                ("FHIR id", order.fhir_id or "-"),
                ("site", site or "-"),
            ):
                fields.add_row(label, Text(value))
            out.print(fields)
            history = Table("received", "control", "source", "sender", "message", "outcome", "changed", "status")
            for event in session.scalars(
                select(OrderEvent).where(OrderEvent.order_id == order.id).order_by(OrderEvent.id)
            ):
                detail = event.detail or {}
                history.add_row(
                    _when(event.received_at),
                    event.control,
                    event.source,
                    Text(event.sender),
                    Text(event.message_id or ""),
                    str(detail.get("outcome", "")),
                    ", ".join(map(str, detail.get("changed", []))),
                    f"{detail.get('status_before', '')} -> {detail.get('status_after', '')}",
                )
            out.print(history)
            studies = session.execute(
                select(Study.study_uid, Study.state, Study.priority).where(Study.order_id == order.id)
            ).all()
            linked = ", ".join(f"{uid} ({state.value}, {priority})" for uid, state, priority in studies)
            out.print(Text(f"linked studies: {linked or 'none'}"))
        flagged = session.scalars(
            select(Study.study_uid).where(Study.accession_number == accession.strip(), Study.order_problem.is_not(None))
        ).all()
        if flagged:
            out.print(Text(f"studies with this accession number not linked (order problem): {', '.join(flagged)}"))
