"""``GET /health``: can this process do its work?  Database, broker, instance store and disk headroom.

Every check runs in its own thread under a short deadline, so a hung database or an unanswered broker
makes the answer fail quickly instead of hanging it.  The answer names each check with a short,
patient-free detail (no URLs, no passwords, no UIDs): 200 when every check passes, 503 otherwise.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.intake.space import store_space
from integration.purge import pressure_candidates
from integration.queue import broker_options, producer
from integration.store.session import engine_for
from integration.web.schemas import Health

T = TypeVar("T")

#: Seconds each check may take before it counts as failed.
CHECK_TIMEOUT_SECONDS = 2.5
#: Longest detail text in an answer (error messages are cut).
MAX_DETAIL_CHARS = 200


@dataclass(frozen=True)
class CheckOutcome:
    """What one check found.

    Attributes
    ----------
    ok : bool
        Whether the check passed.
    detail : str
        One short line for an operator (never patient data).
    values : dict of str to int
        Numbers behind the verdict (the disk check's free and required bytes).
    """

    ok: bool
    detail: str
    values: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """One named check's outcome and how long it took.

    Attributes
    ----------
    name : str
        The check (``database``, ``broker``, ``storage``, ``disk``).
    outcome : CheckOutcome
        What it found.
    seconds : float
        Time it took (the deadline when it timed out).
    """

    name: str
    outcome: CheckOutcome
    seconds: float

    def as_json(self) -> dict[str, Any]:
        """Return the check as a JSON object.

        Returns
        -------
        dict
            ``ok``, ``detail``, ``seconds`` and the check's numbers.
        """
        return {
            "ok": self.outcome.ok,
            "detail": self.outcome.detail,
            "seconds": round(self.seconds, 4),
            **self.outcome.values,
        }


Check = Callable[[Settings], CheckOutcome]


def describe_error(exc: BaseException) -> str:
    """Return an exception as one short line: its type and the first line of its message.

    Parameters
    ----------
    exc : BaseException
        The error.

    Returns
    -------
    str
        ``Type: message``, at most :data:`MAX_DETAIL_CHARS` characters.
    """
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error: its message is the useful one
    source = orig if isinstance(orig, BaseException) else exc
    lines = str(source).strip().splitlines()
    line = f"{type(source).__name__}: {lines[0]}" if lines else type(source).__name__
    return line if len(line) <= MAX_DETAIL_CHARS else line[: MAX_DETAIL_CHARS - 1] + "\u2026"


def start_in_thread(work: Callable[[], T], name: str) -> Future[T]:
    """Run ``work`` in a daemon thread and return its future.

    A daemon thread is used (not a pool) so that work stuck in a network call never blocks the
    process from ending and never holds a pool's slot; the caller waits with a timeout.

    Parameters
    ----------
    work : callable
        What to run.
    name : str
        Thread name.

    Returns
    -------
    concurrent.futures.Future
        Its result or exception.
    """
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def check_database(settings: Settings) -> CheckOutcome:
    """``SELECT 1`` through the process's engine.

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    CheckOutcome
        Passed, with the database's dialect.
    """
    engine = engine_for(settings.database_url)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1")).scalar_one()
    return CheckOutcome(True, f"{engine.dialect.name} answered SELECT 1")


def ping_broker(settings: Settings, timeout: float = CHECK_TIMEOUT_SECONDS) -> str:
    """Reach the Celery broker once, without retries.

    Redis gets a ``PING``; the embedded file-system broker's queue folder gets a file created and
    removed; other transports a single connection attempt through the Celery producer.

    Parameters
    ----------
    settings : Settings
        The settings.
    timeout : float
        Seconds to connect and to wait for the answer.

    Returns
    -------
    str
        What answered.

    Raises
    ------
    Exception
        Whatever the broker's client raised when the broker could not be reached.
    """
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        try:
            client.ping()
        finally:
            client.close()
        return "redis answered PING"
    if url.startswith("filesystem://"):
        folder = Path(broker_options(settings)["data_folder_in"])  # creates the folders, as a producer does
        _write_probe(folder)
        return "file-system broker folder is writable"
    with producer(settings).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        return f"{connection.transport_cls} broker accepted a connection"


def check_broker(settings: Settings) -> CheckOutcome:
    """The Celery broker answers (see :func:`ping_broker`).

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    CheckOutcome
        Passed, with what answered.
    """
    return CheckOutcome(True, ping_broker(settings))


def _write_probe(folder: Path) -> None:
    """Create, sync and remove a small file in ``folder``."""
    descriptor, name = tempfile.mkstemp(dir=folder, prefix="health-", suffix=".tmp")
    try:
        os.write(descriptor, b"pacs-vlm health probe\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
        os.unlink(name)


def check_storage(settings: Settings) -> CheckOutcome:
    """The instance store folder exists and takes a new file.

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    CheckOutcome
        Passed, or failed when the folder is missing.
    """
    root = settings.instance_root
    if not root.is_dir():
        return CheckOutcome(False, "instance store folder is missing")
    _write_probe(root)
    return CheckOutcome(True, "instance store folder is writable")


def check_disk(settings: Settings) -> CheckOutcome:
    """The instance store's file system has room: ``min_free_bytes`` plus ``health_free_margin_bytes`` free.

    An instance is refused when storing it would leave less than ``min_free_bytes`` free, so just above that
    minimum most instances are already refused: the check fails as soon as less than the margin is left
    above it (with a zero ``min_free_bytes`` the headroom check is off, and so is the margin).

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    CheckOutcome
        ``free_bytes``, ``min_free_bytes`` and ``required_free_bytes``; failed below the requirement.
    """
    root = settings.instance_root
    if not root.is_dir():
        return CheckOutcome(False, "instance store folder is missing", {"min_free_bytes": settings.min_free_bytes})
    free = store_space(settings).free_bytes()
    required = settings.min_free_bytes + (settings.health_free_margin_bytes if settings.min_free_bytes else 0)
    values = {"free_bytes": free, "min_free_bytes": settings.min_free_bytes, "required_free_bytes": required}
    if free < settings.min_free_bytes:
        try:
            eligible = len(pressure_candidates(settings))
        except SQLAlchemyError:
            eligible = -1  # the database check says why
        values["studies_eligible_for_purging"] = eligible
        if eligible:
            return CheckOutcome(
                False,
                f"free space below PACSVLM_MIN_FREE_BYTES: {eligible} studies eligible for purging (-1: unknown); "
                "a C-STORE or upload is refused unless purging them frees room",
                values,
            )
        return CheckOutcome(
            False,
            "free space below PACSVLM_MIN_FREE_BYTES and no study eligible for purging: every C-STORE and upload "
            "is refused",
            values,
        )
    if free < required:
        room = free - settings.min_free_bytes
        return CheckOutcome(
            False,
            f"free space within PACSVLM_HEALTH_FREE_MARGIN_BYTES of the minimum: instances above {room} bytes "
            "are refused",
            values,
        )
    return CheckOutcome(True, "free space above PACSVLM_MIN_FREE_BYTES and its margin", values)


#: The checks of ``GET /health``, in answer order.
CHECKS: Mapping[str, Check] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "disk": check_disk,
}


def _run_check(name: str, check: Check, settings: Settings) -> CheckResult:
    """Run one check; an error is a failed outcome with the error's first line."""
    started = time.monotonic()
    try:
        outcome = check(settings)
    except Exception as exc:
        outcome = CheckOutcome(False, describe_error(exc))
    return CheckResult(name, outcome, time.monotonic() - started)


def run_checks(
    settings: Settings, checks: Mapping[str, Check] = CHECKS, timeout: float = CHECK_TIMEOUT_SECONDS
) -> list[CheckResult]:
    """Run checks in parallel, each under the same deadline.

    Parameters
    ----------
    settings : Settings
        The settings.
    checks : mapping of str to callable
        Named checks.
    timeout : float
        Seconds until a check that has not answered counts as failed.

    Returns
    -------
    list of CheckResult
        One per check, in the mapping's order.
    """
    deadline = time.monotonic() + timeout
    futures = {
        name: start_in_thread(partial(_run_check, name, check, settings), f"health-{name}")
        for name, check in checks.items()
    }
    results: list[CheckResult] = []
    for name, future in futures.items():
        try:
            results.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            results.append(CheckResult(name, CheckOutcome(False, f"no answer within {timeout:g} s"), timeout))
    return results


def health_router(settings: Settings) -> APIRouter:
    """Return the router of ``GET /health`` bound to the settings.

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    fastapi.APIRouter
        The router.
    """
    router = APIRouter(tags=["operations"])

    @router.get(
        "/health",
        summary="Health of this process and what it depends on",
        responses={200: {"model": Health}, 503: {"model": Health, "description": "a check failed"}},
    )
    def health() -> JSONResponse:
        """Run the checks: 200 when all pass, 503 naming the failing ones."""
        results = run_checks(settings)
        failing = [result.name for result in results if not result.outcome.ok]
        body = {
            "status": "fail" if failing else "ok",
            "failing": failing,
            "checks": {result.name: result.as_json() for result in results},
        }
        status = HTTPStatus.SERVICE_UNAVAILABLE if failing else HTTPStatus.OK
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    return router
