"""The Celery application of the worker: at-least-once delivery made safe.

The app object is created bare at import (Celery's decorators need it) and
configured from the settings only when a worker starts (:func:`configure`), so
importing the worker has no side effects.

Delivery semantics (Celery with Redis is at-least-once): a task is
acknowledged only after it ran (``acks_late``), a worker process that dies
mid-task puts its message back (``task_reject_on_worker_lost``), each process
takes one message at a time (prefetch 1), Redis re-delivers only after a
visibility timeout above the hard time limit, and the task itself is
idempotent and counts its deliveries against a cap in the database.

Priority: a worker consumes its queues in the order given (stat, analysis,
delivery by default); on Redis the transport option ``queue_order_strategy:
"priority"`` (:func:`integration.queue.broker_options`) makes that order
strict, so a waiting stat job always goes before the next routine one.  A job
already running is never interrupted.

Batching (``PACSVLM_BATCH_SIZE`` N > 1): the worker runs Celery's threads pool with N threads, so with
prefetch 1 it holds at most N messages, each still acknowledged only after its task ran; a killed
worker's N unacknowledged messages are delivered again.  The tasks' generation requests meet in one
micro-batcher (:mod:`models.batching`) that owns the process's single loaded model; at shutdown the
batcher drains before the process exits.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_shutdown

from integration.config import Settings
from integration.queue import broker_options

#: The task modules; Celery imports them when a worker starts, so this module imports none of them.
TASK_MODULES = ("worker.tasks.analysis", "worker.tasks.delivery", "worker.tasks.alerts")

app = Celery("pacs-vlm", set_as_current=False, include=list(TASK_MODULES))


def configure(settings: Settings) -> Celery:
    """Configure the worker's Celery app from the settings and return it.

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    celery.Celery
        The configured app (its ``include`` names the task modules).
    """
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_soft_time_limit=settings.analysis_soft_time_limit,
        task_time_limit=settings.analysis_time_limit,
        task_default_queue=settings.analysis_queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    worker_shutdown.connect(_drain_batchers, weak=False, dispatch_uid="pacs-vlm-drain-batchers")
    return app


def _drain_batchers(**_: Any) -> None:
    """At worker shutdown, run the requests still queued for the model and stop its thread."""
    from worker.backends import close_batchers

    close_batchers()
