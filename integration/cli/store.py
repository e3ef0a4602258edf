"""``pacs-vlm store``: the instance store's files against their rows (``store check [--repair]``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from integration.cli import console, fail, load_settings

store_app = typer.Typer(help="The instance store and its rows.", no_args_is_help=True)


@store_app.command("check")
def check_command(
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Delete old orphan files, drop rows of read studies whose file is gone."),
    ] = False,
) -> None:
    """Report rows without files and files without rows; exit 1 when any is left unrepaired."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store_check import check_store

    settings = load_settings()
    try:
        result = check_store(settings, repair=repair, actor="cli")
    except SQLAlchemyError as exc:
        raise fail(f"the database is unreachable ({type(exc).__name__})") from None
    table = Table("problem", "path", "study", "action")
    for problem in result.problems:
        table.add_row(problem.kind, Text(problem.path), problem.study_uid or "-", problem.action)
    if result.problems:
        console.print(table)
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(result.counts().items())) or "no problems"
    console.print(f"{result.files} files, {result.rows} rows checked: {counts}; {result.repaired} repaired")
    if result.problems and not repair:
        raise typer.Exit(1)
