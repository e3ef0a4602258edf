"""``pacs-vlm eval``: run a configured model over a VQA set and over report pairs, and print the scores."""

from __future__ import annotations

import typer

eval_app = typer.Typer(
    help="Evaluate a model: VQA accuracy and draft-vs-reference report agreement.", no_args_is_help=True
)
