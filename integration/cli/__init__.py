"""The hospital-facing edge's commands, one module per command group; this module holds what they share.

The root command line (:mod:`worker.cli`) mounts them; only it may import both the edge and the worker.
"""

from __future__ import annotations

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console

from integration.config import Settings, get_settings

console = Console(stderr=True)


def load_settings(**overrides: object) -> Settings:
    """Return validated settings, with a command's non-``None`` option overrides, or exit with a readable message."""
    try:
        settings = get_settings()
        given = {name: value for name, value in overrides.items() if value is not None}
        return Settings.model_validate(settings.model_dump() | given) if given else settings
    except SettingsError as exc:
        console.print(f"[red]invalid settings:[/red] {exc} (JSON values such as PACSVLM_CALLING_AES must be JSON)")
        raise typer.Exit(2) from None
    except ValidationError as exc:
        console.print("[red]invalid settings:[/red]")
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            console.print(f"  PACSVLM_{field.upper()}: {error['msg']}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line (what went wrong and what to do) and return the ``typer.Exit`` to raise."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def operator() -> str:
    """The audit actor of a command-line action: ``cli:<operating-system user>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:128]
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME/USER
        return "cli"
