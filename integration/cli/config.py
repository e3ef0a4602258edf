"""``pacs-vlm config``: destinations, calling AEs, routing rules, models and prompt templates, kept in the database.

Every change goes through :mod:`integration.app_config` (checked by the value object the environment
variable used; audited with before and after, as the operator), and bumps the configuration's generation:
the listener and the workers use it within ``config_poll_seconds``, without a restart.  ``config seed``
(mounted by :mod:`worker.cli`, which holds the built-in prompts) copies the environment once per kind;
``config export`` writes everything as JSON for a backup.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from integration.app_config import ConfigRefused, remove, save, save_prompt
from integration.cli import console, fail, load_settings, operator
from integration.cli.jobs import shown
from integration.store import app_config as rows
from integration.store.config_tables import ConfigKind, PromptTemplateRow
from integration.store.session import session_scope

config_app = typer.Typer(
    help="Configuration kept in the database (takes effect within seconds, no restart).", no_args_is_help=True
)
prompt_app = typer.Typer(help="Prompt templates (versioned: a draft records name/vN).", no_args_is_help=True)
config_app.add_typer(prompt_app, name="prompt")

T = TypeVar("T")
KINDS = ", ".join(kind.value for kind in ConfigKind)
#: Longest JSON document file read by ``config set --file`` and prompt task file.
MAX_FILE_BYTES = 1_000_000

KindArgument = Annotated[str, typer.Argument(help=f"Kind: {KINDS}.")]
NameArgument = Annotated[str, typer.Argument(help="The entry's name (destination, AE title, rule or model name).")]


def parse_kind(value: str) -> ConfigKind:
    """Read a kind argument (``calling_ae`` or ``calling-ae``).

    Raises
    ------
    typer.Exit
        Not a kind (exit 2).
    """
    try:
        return ConfigKind(value.strip().lower().replace("-", "_"))
    except ValueError:
        raise fail(f"unknown kind {value[:40]!r}: use {KINDS}", 2) from None


@contextmanager
def _database() -> Iterator[Session]:
    settings = load_settings()
    try:
        with session_scope(settings.database_url) as session:
            yield session
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None


def _changing(work: Callable[[Session], T]) -> T:
    """Run one change in its transaction; a refusal is an error line, not a traceback."""
    try:
        with _database() as session:
            return work(session)
    except ConfigRefused as exc:
        raise fail(str(exc), 2) from None


def _read_file(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise fail(f"{what} {path} is larger than {MAX_FILE_BYTES} bytes", 2)
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {what} {path}: {exc}", 2) from None


def _document(given: str | None, file: Path | None) -> dict[str, Any]:
    if (given is None) == (file is None):
        raise fail("give the document with either --json '{...}' or --file FILE", 2)
    text = given if given is not None else _read_file(file, "document file")  # type: ignore[arg-type]
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"the document is not JSON: {exc}", 2) from None
    if not isinstance(document, dict):
        raise fail("the document must be a JSON object ({...})", 2)
    return document


def _compact(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


@config_app.command("list")
def config_list(kind: Annotated[str | None, typer.Argument(help=f"Only this kind: {KINDS}.")] = None) -> None:
    """List the entries kept in the database, by kind in their order (times in UTC)."""
    kinds = [parse_kind(kind)] if kind is not None else list(ConfigKind)
    table = Table("kind", "name", "position", "document", "updated", "by")
    with _database() as session:
        seeded = rows.seeded_kinds(session)
        for each in kinds:
            for entry in rows.list_entries(session, each):
                table.add_row(
                    each.value,
                    Text(entry.name),
                    str(entry.position),
                    Text(_compact(entry.document)),
                    shown(entry.updated_at),
                    Text(entry.updated_by),
                )
    Console().print(table)
    unseeded = [each.value for each in kinds if each.value not in seeded]
    if unseeded:
        console.print(f"not in the database yet (the environment applies): {', '.join(unseeded)}; see 'config seed'")


@config_app.command("show")
def config_show(kind: KindArgument, name: NameArgument) -> None:
    """Print one entry's document as JSON."""
    chosen = parse_kind(kind)
    with _database() as session:
        entry = rows.get_entry(session, chosen, name)
        if entry is None:
            raise fail(f"no {chosen.value} named {name[:64]!r} ('pacs-vlm config list {chosen.value}')")
        typer.echo(json.dumps({"position": entry.position, "document": entry.document}, indent=2, sort_keys=True))


@config_app.command("set")
def config_set(
    kind: KindArgument,
    name: NameArgument,
    document: Annotated[str | None, typer.Option("--json", help="The document, as a JSON object.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A file holding the JSON document.")] = None,
    position: Annotated[
        int | None, typer.Option(min=0, help="Order within the kind (rules are tried in order).")
    ] = None,
) -> None:
    """Create or replace an entry (checked as its environment variable would be; audited)."""
    chosen = parse_kind(kind)
    given = _document(document, file)
    actor = operator()
    entry = _changing(lambda session: save(session, chosen, name, given, actor=actor, position=position, source="cli"))
    console.print(f"{chosen.value} {entry.name!r} saved at position {entry.position}")


@config_app.command("delete")
def config_delete(kind: KindArgument, name: NameArgument) -> None:
    """Delete an entry (audited; a kind left empty stays empty)."""
    chosen = parse_kind(kind)
    actor = operator()
    if not _changing(lambda session: remove(session, chosen, name, actor=actor, source="cli")):
        raise fail(f"no {chosen.value} named {name[:64]!r} ('pacs-vlm config list {chosen.value}')")
    console.print(f"{chosen.value} {name!r} deleted")


def _prompt_row(row: PromptTemplateRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "modality": row.modality,
        "body_parts": list(row.body_parts),
        "task": row.task,
        "position": row.position,
        "retired": row.retired,
        "created_at": shown(row.created_at),
        "created_by": row.created_by,
    }


@prompt_app.command("list")
def prompt_list(retired: Annotated[bool, typer.Option(help="Show retired templates too.")] = False) -> None:
    """List the current version of each template, in the order they are tried."""
    table = Table("name", "version", "modality", "body parts", "position", "retired", "created", "by")
    with _database() as session:
        for row in rows.current_prompts(session, retired=retired):
            table.add_row(
                Text(row.name),
                f"v{row.version}",
                row.modality or "any",
                Text(", ".join(row.body_parts) or "any"),
                str(row.position),
                "yes" if row.retired else "",
                shown(row.created_at),
                Text(row.created_by),
            )
    Console().print(table)


@prompt_app.command("show")
def prompt_show(
    name: Annotated[str, typer.Argument(help="The template's name.")],
    history: Annotated[bool, typer.Option(help="Every version, newest first.")] = False,
) -> None:
    """Print a template's current version (or its history) as JSON."""
    with _database() as session:
        versions = rows.prompt_history(session, name)
        if not versions:
            raise fail(f"no prompt template named {name[:64]!r} ('pacs-vlm config prompt list')")
        shown_rows = versions if history else versions[:1]
        typer.echo(json.dumps([_prompt_row(row) for row in shown_rows], indent=2))


@prompt_app.command("set")
def prompt_set(
    name: Annotated[str, typer.Argument(help="The template's name (new or existing).")],
    task_file: Annotated[Path, typer.Option(help="File holding the task text (what the model is asked to do).")],
    modality: Annotated[str | None, typer.Option(help="DICOM modality it applies to (unset: any).")] = None,
    body_part: Annotated[
        list[str] | None, typer.Option(help="Body part keyword it applies to (repeat; unset: any).")
    ] = None,
    position: Annotated[int | None, typer.Option(min=0, help="Where it is tried among the others.")] = None,
) -> None:
    """Save a template's next version (drafts from now on record name/v<next>)."""
    fields = {
        "modality": modality.strip().upper() if modality else None,
        "body_parts": [part.strip().upper() for part in body_part or []],
        "task": _read_file(task_file, "task file").strip(),
    }
    actor = operator()
    row = _changing(lambda session: save_prompt(session, name, fields, actor=actor, position=position, source="cli"))
    console.print(f"prompt {row.name}/v{row.version} in force")


@prompt_app.command("retire")
def prompt_retire(name: Annotated[str, typer.Argument(help="The template's name.")]) -> None:
    """Stop choosing or offering a template (its versions stay readable for the drafts that name them)."""
    actor = operator()

    def retire(session: Session) -> PromptTemplateRow:
        versions = rows.prompt_history(session, name)
        if not versions:
            raise fail(f"no prompt template named {name[:64]!r} ('pacs-vlm config prompt list')")
        current = versions[0]
        fields = {"modality": current.modality, "body_parts": list(current.body_parts), "task": current.task}
        return save_prompt(session, name, fields, actor=actor, retired=True, source="cli")

    row = _changing(retire)
    console.print(f"prompt {row.name} retired (v{row.version})")


@config_app.command("export")
def config_export() -> None:
    """Print every entry and every prompt version as one JSON document (a backup; no secrets are kept here)."""
    with _database() as session:
        exported = {
            "generation": rows.generation(session),
            "seeded": sorted(rows.seeded_kinds(session)),
            "entries": {
                kind.value: [
                    {"name": e.name, "position": e.position, "document": e.document}
                    for e in rows.list_entries(session, kind)
                ]
                for kind in ConfigKind
            },
            "prompts": [
                _prompt_row(row)
                for current in rows.current_prompts(session, retired=True)
                for row in rows.prompt_history(session, current.name)
            ],
        }
    typer.echo(json.dumps(exported, indent=2))
