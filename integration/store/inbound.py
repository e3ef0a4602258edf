"""The ACK given to each inbound HL7 message, remembered by sender and message control id (MSH-10).

A RIS that did not see our ACK (a timeout, a dropped connection) sends the same message again with the same
MSH-10.  Applying it twice could undo a later change, so the second copy must get the first copy's answer
and change nothing: the listener asks :func:`remembered_ack` first, and :func:`remember_ack` records the
answer in the same transaction as the order change it describes.

Two copies arriving at once on two connections both find nothing remembered; the unique
``(sender, control_id)`` key makes the second :func:`remember_ack` fail with :class:`AlreadyAnswered`, its
caller rolls back everything the copy did and answers with what the first one remembered.

``ack_text`` holds what follows MSA-1: for AA what was done (``order created``), and for AE
``"<table 0357 code> <text>"`` (for example ``"204 CA for an order we do not hold"``), so the repeated answer
carries the same ERR code.
"""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integration.store.order_tables import InboundMessage
from integration.store.tables import utcnow


class AlreadyAnswered(Exception):
    """Another transaction remembered an answer for this sender and control id first (roll back, ask again)."""


def remembered_ack(session: Session, sender: str, control_id: str) -> tuple[str, str | None] | None:
    """Return the ACK code and text given to this sender's message ``control_id``, or None if it is new."""
    row = session.execute(
        select(InboundMessage.ack_code, InboundMessage.ack_text).where(
            InboundMessage.sender == sender, InboundMessage.control_id == control_id
        )
    ).first()
    return None if row is None else (row.ack_code, row.ack_text)


def remember_ack(
    session: Session,
    sender: str,
    control_id: str,
    message_type: str,
    code: str,
    text: str | None,
    order_id: int | None,
) -> None:
    """Record the answer to one message in the caller's transaction (flushed at once).

    Parameters
    ----------
    session : Session
        The transaction that applied the message.
    sender : str
        ``<MSH-3>^<MSH-4>``.
    control_id : str
        MSH-10.
    message_type : str
        For example ``ORM^O01``.
    code : str
        ``AA``, ``AE`` or ``AR``.
    text : str or None
        See the module docstring.
    order_id : int or None
        The order the message applied to.

    Raises
    ------
    AlreadyAnswered
        When another transaction remembered this sender's ``control_id`` first; the caller's transaction
        is then failed and must be rolled back (everything it did with it).  No savepoint is taken: a
        savepoint costs two round trips on every message for a race that is rare.
    """
    try:  # a plain INSERT: no unit of work to flush (this runs for every message)
        session.execute(
            insert(InboundMessage).values(
                sender=sender,
                control_id=control_id,
                message_type=message_type[:16],
                ack_code=code,
                ack_text=text,
                order_id=order_id,
                received_at=utcnow(),
            )
        )
    except IntegrityError:
        raise AlreadyAnswered(control_id) from None
