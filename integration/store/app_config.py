"""Rows of the configuration kept in the database: entries by kind and name, prompt versions, the generation.

Documents arrive here already validated (``integration/app_config.py`` checks them with their value
objects); this module only keeps them, audits each change with its before and after, and bumps the
generation in the same transaction so the listener and the workers see it within seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.config_tables import ConfigEntry, ConfigGeneration, ConfigKind, PromptTemplateRow
from integration.store.session import dialect_insert
from integration.store.tables import utcnow


def generation(session: Session) -> int:
    """Return the configuration's generation (0 before any change)."""
    return session.scalar(select(ConfigGeneration.generation).where(ConfigGeneration.id == 1)) or 0


def _generation_row(session: Session) -> ConfigGeneration:
    # insert-if-missing first, so two processes changing (or seeding) a new database at once both find the
    # row and queue on its lock instead of one failing on the primary key
    insert = dialect_insert(session)
    session.execute(
        insert(ConfigGeneration)
        .values(id=1, generation=0, seeded="", changed_at=utcnow())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = session.get(ConfigGeneration, 1, with_for_update=True, populate_existing=True)
    assert row is not None  # inserted above or by another transaction
    return row


def lock_generation(session: Session) -> set[str]:
    """Lock the generation row until the transaction ends; return the kinds seeded (read under the lock)."""
    return {kind for kind in _generation_row(session).seeded.split(",") if kind}


def bump(session: Session) -> int:
    """Increment the generation (row-locked, so concurrent changes each get their own number); return it."""
    row = _generation_row(session)
    row.generation += 1
    row.changed_at = utcnow()
    session.flush()
    return row.generation


def seeded_kinds(session: Session) -> set[str]:
    """Return the kinds (``ConfigKind`` values and ``prompt``) already seeded from the environment."""
    row = session.get(ConfigGeneration, 1)
    return {kind for kind in (row.seeded if row else "").split(",") if kind}


def mark_seeded(session: Session, kind: str) -> None:
    """Record that ``kind`` was seeded: later starts leave it as the administrators made it."""
    row = _generation_row(session)
    row.seeded = ",".join(sorted(seeded_kinds(session) | {kind}))
    session.flush()


def list_entries(session: Session, kind: ConfigKind) -> list[ConfigEntry]:
    """Return the entries of one kind in their order."""
    query = select(ConfigEntry).where(ConfigEntry.kind == kind).order_by(ConfigEntry.position, ConfigEntry.id)
    return list(session.scalars(query))


def get_entry(session: Session, kind: ConfigKind, name: str) -> ConfigEntry | None:
    """Return one entry, or None."""
    return session.scalar(select(ConfigEntry).where(ConfigEntry.kind == kind, ConfigEntry.name == name))


def put_entry(
    session: Session,
    kind: ConfigKind,
    name: str,
    document: dict[str, Any],
    *,
    actor: str,
    position: int | None = None,
    source: str | None = None,
) -> ConfigEntry:
    """Create or replace one entry (a validated document); audited ``config.<kind>.saved`` with before and after.

    A new entry without ``position`` goes last; a ``position`` another entry holds puts this one before it
    (that entry and those after it move down one).
    """
    entry = get_entry(session, kind, name)
    if position is not None and session.scalar(
        select(ConfigEntry.id).where(
            ConfigEntry.kind == kind, ConfigEntry.position == position, ConfigEntry.name != name
        )
    ):
        session.execute(
            update(ConfigEntry)
            .where(ConfigEntry.kind == kind, ConfigEntry.position >= position, ConfigEntry.name != name)
            .values(position=ConfigEntry.position + 1)
            .execution_options(synchronize_session="fetch")
        )
    before = None if entry is None else {"position": entry.position, "document": entry.document}
    if entry is None:
        if position is None:
            last = session.scalar(select(func.max(ConfigEntry.position)).where(ConfigEntry.kind == kind))
            position = 0 if last is None else last + 1
        entry = ConfigEntry(kind=kind, name=name, position=position, document=document, updated_by=actor)
        session.add(entry)
    else:
        entry.document = document
        entry.position = entry.position if position is None else position
        entry.updated_by = actor
        entry.updated_at = utcnow()
    after = {"position": entry.position, "document": document}
    if kind.value not in seeded_kinds(session):
        mark_seeded(session, kind.value)  # an administrator's first entry: the database holds this kind now
    add_event(
        session,
        actor=actor,
        action=f"config.{kind.value}.saved",
        object_type=kind.value,
        object_id=name,
        source=source,
        detail={"before": before, "after": after, "generation": bump(session)},
    )
    return entry


def delete_entry(
    session: Session, kind: ConfigKind, name: str, *, actor: str, source: str | None = None
) -> dict[str, Any] | None:
    """Delete one entry; return its document (None when there was none). Audited ``config.<kind>.deleted``."""
    entry = get_entry(session, kind, name)
    if entry is None:
        return None
    before = {"position": entry.position, "document": entry.document}
    session.delete(entry)
    add_event(
        session,
        actor=actor,
        action=f"config.{kind.value}.deleted",
        object_type=kind.value,
        object_id=name,
        source=source,
        detail={"before": before, "after": None, "generation": bump(session)},
    )
    return entry.document


def current_prompts(session: Session, *, retired: bool = False) -> list[PromptTemplateRow]:
    """Return the latest version of each prompt template, in the order templates are tried.

    Retired templates are left out unless ``retired`` is true.
    """
    latest = (
        select(PromptTemplateRow.name, func.max(PromptTemplateRow.version).label("version"))
        .group_by(PromptTemplateRow.name)
        .subquery()
    )
    query = select(PromptTemplateRow).join(
        latest, (PromptTemplateRow.name == latest.c.name) & (PromptTemplateRow.version == latest.c.version)
    )
    if not retired:
        query = query.where(PromptTemplateRow.retired.is_(False))
    return list(session.scalars(query.order_by(PromptTemplateRow.position, PromptTemplateRow.name)))


def prompt_history(session: Session, name: str) -> list[PromptTemplateRow]:
    """Return every version of one template, newest first."""
    query = select(PromptTemplateRow).where(PromptTemplateRow.name == name)
    return list(session.scalars(query.order_by(PromptTemplateRow.version.desc())))


def prompt_version(session: Session, name: str, version: int) -> PromptTemplateRow | None:
    """Return one version of one template (what a draft's ``name/vN`` names), or None."""
    return session.scalar(
        select(PromptTemplateRow).where(PromptTemplateRow.name == name, PromptTemplateRow.version == version)
    )


def _prompt_document(row: PromptTemplateRow) -> dict[str, Any]:
    return {
        "version": row.version,
        "modality": row.modality,
        "body_parts": list(row.body_parts),
        "task": row.task,
        "position": row.position,
        "retired": row.retired,
    }


def save_prompt(
    session: Session,
    name: str,
    *,
    modality: str | None,
    body_parts: Sequence[str],
    task: str,
    actor: str,
    position: int | None = None,
    retired: bool = False,
    version: int | None = None,
    source: str | None = None,
) -> PromptTemplateRow:
    """Add the next version of a template (or its first); audited ``config.prompt.saved`` with before and after.

    ``version`` is for seeding the built-in templates at their own numbers; otherwise the next number is
    taken.  An unchanged template (same wording, criteria, position and state) adds nothing and returns
    the current version.
    """
    history = prompt_history(session, name)
    current = history[0] if history else None
    if position is None:
        if current is not None:
            position = current.position
        else:
            last = session.scalar(select(func.max(PromptTemplateRow.position)))
            position = 0 if last is None else last + 1
    if current is not None and (
        current.modality == modality
        and list(current.body_parts) == list(body_parts)
        and current.task == task
        and current.position == position
        and current.retired == retired
    ):
        return current
    number = version if version is not None else (current.version + 1 if current is not None else 1)
    if current is not None and number <= current.version:
        raise ValueError(f"prompt {name!r} already has version {current.version}")
    row = PromptTemplateRow(
        name=name,
        version=number,
        modality=modality,
        body_parts=list(body_parts),
        task=task,
        position=position,
        retired=retired,
        created_by=actor,
    )
    session.add(row)
    session.flush()
    add_event(
        session,
        actor=actor,
        action="config.prompt.saved",
        object_type="prompt",
        object_id=f"{name}/v{number}",
        source=source,
        detail={
            "before": None if current is None else _prompt_document(current),
            "after": _prompt_document(row),
            "generation": bump(session),
        },
    )
    return row
