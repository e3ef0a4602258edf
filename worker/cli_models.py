"""``pacs-vlm models``: model checkpoints (conversion of original releases into the layout the loader reads)."""

from __future__ import annotations

import typer

models_app = typer.Typer(help="Model checkpoints: convert original releases for the loader.", no_args_is_help=True)
