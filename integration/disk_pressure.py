"""Disk pressure and the scheduled purge: the listener frees room before it would refuse an instance.

``pacs-vlm listen`` runs :class:`PurgeLoop` (a thread, beside the prior fetcher).  Every
``purge_check_seconds`` it reads the store's free space (:func:`store_space`: the file system's, or what the
quota leaves); below the high-water mark (``purge_free_bytes``, by default four times ``min_free_bytes``) it
purges the eligible studies whose reading ended longest ago, one at a time, until free space is back above
the mark plus ``purge_hysteresis_bytes``.  Every ``purge_interval_minutes`` it runs the policy purge
(``pacs-vlm purge``) too.  And a write that would leave less than ``min_free_bytes`` free first purges
eligible studies synchronously (:meth:`PurgeLoop.relieve`, one study per call, for at most
:data:`~integration.intake.storage.RELIEF_SECONDS`): a C-STORE is refused only when nothing eligible is left.

*Eligible under pressure* is what the retention policies let go now; with ``purge_early_under_pressure``
also the instances of every read (signed or rejected) study a policy covers, before their ``instance_days``
(a hospital's choice: off by default, since the images of a read study may still be wanted for comparison).
Never: a study no policy covers, one receiving, stable, queued, running or held, one with a job open or a
draft awaiting review, one never read, a prior still used by such a study (see
:func:`integration.store.retention.eligible_studies`).  Reports and SRs never go early.

Two listeners on one database never purge at once: the purge holds a PostgreSQL advisory lock (a
process-local lock on SQLite, which one process uses).  Each purge is audited ``retention.purge`` with
counts and its reason (``disk pressure`` or ``schedule``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.intake.intake import InstanceIntake, intake_for
from integration.intake.space import StoreSpace
from integration.purge import PurgeTotals, audit_purge, pressure_candidates, purge, purge_study
from integration.store.purge_totals import RowCounters
from integration.store.session import engine_for
from integration.store.tables import utcnow

log = logging.getLogger(__name__)

#: The advisory lock's key (``pacsvlm-purge`` as a number): one purge at a time per database.
PURGE_LOCK_KEY = 0x7061_6373_7075_7267 >> 1
#: The audit reasons.
PRESSURE = "disk pressure"
SCHEDULE = "schedule"

_local_lock = threading.Lock()


@contextmanager
def purge_lock(settings: Settings, wait_seconds: float = 0.0) -> Iterator[bool]:
    """Hold the purge lock of the database (yield True), or yield False when another purge holds it.

    Waits up to ``wait_seconds`` for another thread of this process; never for another process.
    """
    if not _local_lock.acquire(timeout=wait_seconds if wait_seconds > 0 else -1, blocking=wait_seconds > 0):
        yield False
        return
    try:
        engine = engine_for(settings.database_url)
        if engine.dialect.name != "postgresql":
            yield True
            return
        with engine.connect() as connection:
            held = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PURGE_LOCK_KEY}).scalar())
            connection.commit()
            try:
                yield held
            finally:
                if held:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PURGE_LOCK_KEY})
                    connection.commit()
    finally:
        _local_lock.release()


class PurgeLoop:
    """The listener's purge thread, and the intake's synchronous purge before a refusal.

    Parameters
    ----------
    settings : Settings
        Retention, the marks and intervals, the database.
    space : StoreSpace
        The instance store's free space (the one the intake checks).
    measure : callable
        Reads the row-derived counters (``integration.web.ops.purge_totals.counter_reader``), so each purge
        keeps what it removed from them.
    """

    def __init__(self, settings: Settings, space: StoreSpace, measure: RowCounters) -> None:
        self.settings = settings
        self.space = space
        self.measure = measure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._starved = False  # logged "nothing eligible" already, until something is again

    def start(self) -> None:
        """Start the thread (free-space checks and, unless disabled, the scheduled purge)."""
        self._thread = threading.Thread(target=self._loop, name="purge-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a purge under way finishes its study first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def relieve(self, size: int) -> bool:
        """Purge one eligible study so a write of ``size`` bytes fits; False when nothing is eligible.

        Called by the instance store before it would refuse a write (the intake's synchronous purge).
        """
        with purge_lock(self.settings, wait_seconds=2.0) as held:
            if not held:
                time.sleep(0.2)  # another purge runs (it frees room): look at free space again
                return True
            if self.space.free_bytes() - size >= self.settings.min_free_bytes:
                return True  # the purge that held the lock freed enough
            try:
                return self._purge_until(self.settings.min_free_bytes + size, most=1) > 0
            except SQLAlchemyError as exc:
                log.error("disk pressure: the purge before a refusal failed (%s)", type(exc).__name__)
                return False

    def under_pressure(self) -> bool:
        """Tell whether free space is below the high-water mark."""
        return self.space.free_bytes() < self.settings.purge_mark_bytes

    def relieve_pressure(self) -> int:
        """Purge the oldest eligible studies until free space is above the mark plus the hysteresis.

        Returns
        -------
        int
            Studies purged (0 also when another purge holds the lock).
        """
        with purge_lock(self.settings) as held:
            if not held:
                return 0
            return self._purge_until(self.settings.purge_target_bytes)

    def scheduled_purge(self) -> PurgeTotals | None:
        """Run the policy purge under the lock; None when another purge holds it."""
        with purge_lock(self.settings) as held:
            if not held:
                return None
            totals = purge(self.settings, utcnow(), reason=SCHEDULE, measure=self.measure)
            self.space.freed(totals.size_bytes)
            return totals

    def _purge_until(self, free_target: int, most: int | None = None) -> int:
        """Purge candidates, oldest reading first, until ``free_target`` bytes are free (or ``most`` studies)."""
        totals = PurgeTotals()
        now = utcnow()
        candidates = pressure_candidates(self.settings, now)
        for candidate in candidates:
            if self.space.free_bytes() >= free_target or (most is not None and totals.studies >= most):
                break
            before = totals.size_bytes
            purge_study(self.settings, candidate, now, totals, actor="system", measure=self.measure)
            self.space.freed(totals.size_bytes - before)
        if totals.studies or totals.called_off:
            audit_purge(self.settings, totals, actor="system", reason=PRESSURE)
            self._starved = False
        if self.space.free_bytes() < free_target and not totals.studies and not self._starved:
            self._starved = True
            log.error(
                "disk pressure: %d bytes free, below the purge mark, and no study eligible for purging "
                "(%d candidates); C-STOREs are refused once below PACSVLM_MIN_FREE_BYTES",
                self.space.free_bytes(),
                len(candidates),
            )
        return totals.studies

    def _loop(self) -> None:
        interval = self.settings.purge_interval_minutes * 60.0
        next_scheduled = time.monotonic() + self.settings.purge_check_seconds
        while not self._stop.wait(self.settings.purge_check_seconds):
            try:
                if self.settings.retention and self.under_pressure():
                    self.relieve_pressure()
                due = self.settings.retention and interval and time.monotonic() >= next_scheduled
                if due and self.scheduled_purge() is not None:
                    next_scheduled = time.monotonic() + interval
            except (SQLAlchemyError, OSError) as exc:
                log.warning(
                    "purge loop: %s (tried again in %.0f s)", type(exc).__name__, self.settings.purge_check_seconds
                )


_relief_lock = threading.Lock()


def relieving_intake(settings: Settings, measure: RowCounters) -> InstanceIntake:
    """Return this process's intake, whose store purges an eligible study before it refuses a write.

    For the ``pacs-vlm api`` process (STOW-RS, photo uploads), which runs no purge loop: a write that would
    leave less than ``min_free_bytes`` free purges as the listener's C-STORE does (under the same lock), and
    is refused only when nothing is eligible.
    """
    intake = intake_for(settings)
    with _relief_lock:
        if intake.files.relieve is None:
            intake.files.relieve = PurgeLoop(settings, intake.files.space, measure).relieve
    return intake
