"""The worker's commands: ``pacs-vlm worker`` and ``pacs-vlm demo``."""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer

from integration.cli import console, fail, load_settings
from integration.config import Settings


def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues, taken in this order: a message of an earlier queue always goes first "
            "(default: the stat, analysis and delivery queues). A worker for the delivery queue alone needs no model."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Override PACSVLM_MODEL_DEVICE for this process: auto, cpu or cuda:<n>.")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Override PACSVLM_BATCH_SIZE: studies drafted together in one model batch (1: one at a time). "
            "Above 1 the worker holds that many messages in a threads pool.",
        ),
    ] = None,
    batch_wait_ms: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=60000,
            help="Override PACSVLM_BATCH_WAIT_MS: how long a batch waits for more studies after its first.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run one Celery worker process that drafts reports (start one per GPU)."""
    from integration.config import install_settings
    from integration.queue import worker_queues
    from integration.store.migrate import SchemaOutOfDate, ensure_schema

    settings = load_settings(model_device=device, batch_size=batch_size, batch_wait_ms=batch_wait_ms)
    install_settings(settings)  # the tasks, and the prefork child forked from this process, use these
    try:
        ensure_schema(settings.database_url)
    except SchemaOutOfDate as exc:
        raise fail(str(exc), 2) from None
    from worker.live_prompts import seed_prompts

    seed_prompts(settings)  # a new database gets the built-in templates at their own versions (once)
    chosen = [q.strip() for q in (queues or ",".join(worker_queues(settings))).split(",") if q.strip()]
    if not chosen:
        raise fail("--queues names no queue", 2)
    analyses = bool({settings.analysis_queue, settings.stat_queue} & set(chosen))
    if analyses:
        _check_models(settings)
    from worker.celery_app import configure

    app = configure(settings)
    model = _model_line(settings) if analyses else "no model (deliveries only)"
    named = f", second-opinion models {', '.join(sorted(settings.models))}" if analyses and settings.models else ""
    batching = analyses and settings.batch_size > 1
    batches = f", batches of up to {settings.batch_size} ({settings.batch_wait_ms} ms window)" if batching else ""
    console.print(f"worker: {model}{named}, queue(s) {','.join(chosen)}{batches}")
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(chosen),
            *_pool_options(settings.batch_size if batching else 1),
            "--loglevel",
            log_level.upper(),
            "--hostname",
            f"pacs-vlm-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _pool_options(batch_size: int) -> list[str]:
    """Celery pool options: one prefork child, or for batching a threads pool holding ``batch_size`` messages.

    With prefetch multiplier 1 (:func:`worker.celery_app.configure`) a pool of N takes at most N messages; each is
    acknowledged only after its task ran, so a killed worker loses none of them.
    """
    if batch_size <= 1:
        return ["--concurrency", "1", "--pool", "prefork"]
    return ["--concurrency", str(batch_size), "--pool", "threads"]


def _model_line(settings: Settings) -> str:
    """Say where the default model runs (a server URL carries no secret: the key is a separate setting)."""
    if settings.model_server_url is None:
        return f"model {settings.model} on {settings.model_device}"
    from models.openai_backend import server_display

    boundary = (
        "inside the trust boundary"
        if settings.model_server_trusted
        else "outside the trust boundary: pixels and de-identified minimum metadata only"
    )
    name = settings.model_server_model or "(the one it lists)"
    return f"model {name} at {server_display(settings.model_server_url)} ({boundary})"


def _check_models(settings: Settings) -> None:
    """Refuse to start an analysis worker whose default or named models are not staged (nothing is loaded)."""
    from models.backend import ModelNotStaged
    from models.transformers_backend import TransformersBackend

    if settings.model is None and settings.model_server_url is None:
        raise fail(
            "no model configured: set PACSVLM_MODEL to the folder of a staged checkpoint "
            "(see the README, 'Models'; weights are never downloaded at run time), "
            "or PACSVLM_MODEL_SERVER_URL to an OpenAI-compatible model server",
            2,
        )
    if settings.model_server_url is not None:
        from models.openai_backend import OpenAICompatibleBackend
        from worker.backends import served_backend_options

        try:
            OpenAICompatibleBackend(**served_backend_options(settings)).close()  # checks; connects to nothing
        except ValueError as exc:
            raise fail(f"model server settings (PACSVLM_MODEL_SERVER_*): {exc}", 2) from None
    default = [] if settings.model_server_url is not None or settings.model is None else [(None, settings.model)]
    for name, folder in [*default, *settings.models.items()]:
        try:
            TransformersBackend(folder, device=settings.model_device)  # checks the folder; loads nothing yet
        except ModelNotStaged as exc:
            where = "" if name is None else f"model {name!r} of PACSVLM_MODELS: "
            raise fail(f"{where}{exc}", 2) from None


def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo's data folder (var/demo) from an earlier run.")] = False,
) -> None:
    """Start the service on embedded defaults with a smoke-test model, send sample studies, print the drafts."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))
