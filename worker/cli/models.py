"""``pacs-vlm models``: model checkpoints (conversion of original releases into the layout the loader reads)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

models_app = typer.Typer(help="Model checkpoints: convert original releases for the loader.", no_args_is_help=True)
console = Console(stderr=True)


class OriginalRelease(StrEnum):
    """Original releases ``pacs-vlm models convert`` can read."""

    LLAVA_MED = "llava-med"


@models_app.command("convert")
def convert(
    source: Annotated[Path, typer.Argument(help="Directory of the original checkpoint (config.json, weights).")],
    to: Annotated[Path, typer.Option("--to", help="Directory to write the converted checkpoint to.")],
    from_: Annotated[
        OriginalRelease,
        typer.Option("--from", help="The original release's layout: llava-med (LLaVA-Med v1.5, llava_mistral)."),
    ],
    vision_tower: Annotated[
        Path | None,
        typer.Option(
            "--vision-tower",
            help="Local directory of the CLIP model the checkpoint names (openai/clip-vit-large-patch14-336), "
            "needed when the checkpoint does not carry its vision tower.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a target directory that is not empty.")] = False,
) -> None:
    """Convert an original release once into the transformers layout the worker loads.

    LLaVA-Med v1.5 (``llava_mistral``) becomes a ``LlavaForConditionalGeneration`` checkpoint with
    its processor, an ``<image>`` token and LLaVA-Med's chat template; stage the converted directory
    as the model.  Exits with status 2 and a message when the checkpoint cannot be converted.
    """
    from models.conversion import ConversionError
    from models.conversion.llava_med import convert_llava_med

    assert from_ is OriginalRelease.LLAVA_MED
    console.print(f"converting {source} ({from_.value}) to {to} ...")
    try:
        written = convert_llava_med(source, to, vision_tower_dir=vision_tower, overwrite=overwrite)
    except ConversionError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    except OSError as error:
        console.print(f"[red]error:[/red] cannot write the converted checkpoint: {error}")
        raise typer.Exit(2) from None
    typer.echo(f"converted {source} to {written}; stage it as the model (PACSVLM_MODEL)")
