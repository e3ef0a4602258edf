"""Task names and enqueue helpers: the edge sends tasks by name, never importing the worker.

Messages carry only ids; the analysis-job row is the outbox, so a message that
a broker loses is sent again by the reconciler (:mod:`integration.intake.assembly`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from integration.config import Settings

if TYPE_CHECKING:
    from celery import Celery

#: The worker task that drafts a report for one analysis job.
ANALYZE_STUDY = "pacs_vlm.analyze_study"
#: The worker task that delivers one report document to one destination.
DELIVER = "pacs_vlm.deliver"
#: The worker task that sends one critical-finding notification to one contact (on the delivery queue).
NOTIFY_ALERT = "pacs_vlm.notify_alert"


def broker_options(settings: Settings) -> dict[str, Any]:
    """Return Celery's ``broker_transport_options`` for the configured broker.

    The embedded default is kombu's file-system transport in
    ``<data_dir>/broker`` (no server); Redis gets a visibility timeout above
    the longest task and strict queue priority: kombu's Redis transport asks
    ``BRPOP`` for a worker's queues in the order they were given
    (``queue_order_strategy: "priority"``, instead of rotating them round
    robin), and Redis answers from the first non-empty list, so a worker
    started with ``--queues analysis.stat,analysis,delivery`` takes every stat
    job before the next routine one.
    """
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # exchange tables: kombu's default is ./control, in whatever folder the process started
            "control_folder": str(folder / "control"),
        }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": settings.visibility_timeout, "queue_order_strategy": "priority"}
    return {}


@lru_cache(maxsize=4)
def _producer_app(broker_url: str, options: tuple[tuple[str, Any], ...]) -> Celery:
    from celery import Celery

    app = Celery("pacs-vlm-producer", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = dict(options)
    app.conf.broker_connection_retry_on_startup = False
    app.conf.task_serializer = "json"
    return app


def producer(settings: Settings) -> Celery:
    """Return a Celery app that only sends (built once per broker URL)."""
    return _producer_app(settings.broker_url, tuple(sorted(broker_options(settings).items())))


def worker_queues(settings: Settings) -> list[str]:
    """Return the queues a worker consumes by default, first-served first: stat, analysis, delivery."""
    return [settings.stat_queue, settings.analysis_queue, settings.delivery_queue]


def send_analyze_study(settings: Settings, job_id: int, queue: str, send_count: int) -> str:
    """Send the ``analyze_study(job_id)`` message to ``queue`` and return the task id.

    ``send_count`` is how many times this job was sent before; it makes the task id unique per send.

    Raises
    ------
    kombu.exceptions.OperationalError
        If the broker cannot be reached (the job stays unsent for the reconciler).
    """
    task_id = f"analysis-job-{job_id}-{send_count + 1}"
    producer(settings).send_task(
        ANALYZE_STUDY,
        args=[job_id],
        queue=queue,
        task_id=task_id,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
    return task_id


def send_deliver(settings: Settings, delivery_id: int, *, countdown: float | None = None) -> None:
    """Send the ``deliver(delivery_id)`` message to the delivery queue, runnable after ``countdown`` seconds.

    Raises
    ------
    kombu.exceptions.OperationalError
        If the broker cannot be reached (the delivery stays pending; ``pacs-vlm deliveries retry`` re-sends it).
    """
    producer(settings).send_task(
        DELIVER,
        args=[delivery_id],
        queue=settings.delivery_queue,
        countdown=countdown,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )


def send_notify_alert(settings: Settings, notification_id: int, *, countdown: float | None = None) -> None:
    """Send the ``notify_alert(notification_id)`` message to the delivery queue, runnable after ``countdown`` seconds.

    Raises
    ------
    kombu.exceptions.OperationalError
        If the broker cannot be reached (the notification stays pending; the listener's reconciler re-sends it).
    """
    producer(settings).send_task(
        NOTIFY_ALERT,
        args=[notification_id],
        queue=settings.delivery_queue,
        countdown=countdown,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )


def broker_identity(settings: Settings) -> str | None:
    """Return an id that changes when the broker restarts (Redis ``run_id``); None for brokers without one."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    return str(_redis_client(settings.broker_url).info("server")["run_id"])


@lru_cache(maxsize=4)
def _redis_client(url: str) -> Any:
    """One pooled client per broker URL (the assembly loop asks every pass)."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def queue_depth(settings: Settings, queue: str) -> int:
    """Return the number of messages waiting in a queue (not counting those a worker holds)."""
    with producer(settings).connection_for_write() as connection:
        channel = connection.default_channel
        declared = channel.queue_declare(queue=queue, passive=False, durable=True, auto_delete=False)
        return int(declared.message_count)
