"""The retention purge: rows and files of the studies the policies let go, removed so neither outlives the other.

Three steps, each safe to stop after: (1) one transaction marks every eligible study
(:func:`integration.store.retention.mark`); (2) per marked study, one transaction locks the study's row (an
instance arriving for it waits), deletes its files (idempotently: a missing file is already gone), then its
rows and its mark, with an audit event of counts, and commits.  A crash inside (2) rolls the rows back and
keeps the mark, so the next purge finishes that study first; a study that received an instance since its
mark is left alone when none of its files is gone yet (the purge is called off), and otherwise loses only
what it held at the mark.  ``dry_run`` plans without writing anything.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, text

from integration.config import Settings
from integration.store.audit import add_event
from integration.store.purge_totals import RowCounters, add_purge_totals, removed_by
from integration.store.retention import (
    Candidate,
    StudyFiles,
    call_off,
    delete_marked_rows,
    eligible_studies,
    files_of,
    lock_study,
    mark,
    marked_purges,
    moved_on,
)
from integration.store.retention_tables import PurgeScope, StudyPurge
from integration.store.session import session_scope
from integration.store.tables import utcnow
from integration.uids import is_valid_uid

log = logging.getLogger(__name__)

#: Longest a disk pressure purge waits for a study's row (an instance of it may be waiting for room).
STUDY_LOCK_TIMEOUT_MS = 3000


@dataclass
class PurgeTotals:
    """What a purge removed (or, dry, would remove): counts only, as audited."""

    studies: int = 0
    whole_studies: int = 0
    instances: int = 0
    size_bytes: int = 0
    report_files: int = 0
    resumed: int = 0
    called_off: int = 0
    planned: list[Candidate] = field(default_factory=list)

    def audit_detail(self) -> dict[str, int]:
        """The counts as an audit event's detail."""
        return {
            "studies": self.studies,
            "whole_studies": self.whole_studies,
            "instances": self.instances,
            "bytes": self.size_bytes,
            "report_files": self.report_files,
            "resumed": self.resumed,
            "called_off": self.called_off,
        }


def plan(settings: Settings, now: datetime) -> list[Candidate]:
    """Return what a purge at ``now`` would remove, writing nothing (``pacs-vlm purge --dry-run``)."""
    with session_scope(settings.database_url) as session:
        return eligible_studies(session, settings.retention, now)


def pressure_candidates(settings: Settings, now: datetime | None = None) -> list[Candidate]:
    """Return the studies a disk pressure purge may take, the one read longest ago first.

    Parameters
    ----------
    settings : Settings
        Database, ``retention`` and ``purge_early_under_pressure`` (read studies before their policy date).
    now : datetime, optional
        The time the policies' days count to (now).

    Returns
    -------
    list of Candidate
        Empty when no retention policy is configured.
    """
    if not settings.retention:
        return []
    with session_scope(settings.database_url) as session:
        found = eligible_studies(
            session, settings.retention, now or utcnow(), early=settings.purge_early_under_pressure
        )
    return sorted(found, key=lambda c: (c.read_at is None, c.read_at or datetime.min, c.study_id))


def mark_eligible(settings: Settings, now: datetime) -> int:
    """Step 1: mark every eligible study, in one transaction; return how many marks were added."""
    with session_scope(settings.database_url) as session:
        return mark(session, eligible_studies(session, settings.retention, now), now)


def purge(
    settings: Settings,
    now: datetime,
    *,
    actor: str = "system",
    progress: Callable[[int, int], None] | None = None,
    reason: str | None = None,
    measure: RowCounters | None = None,
) -> PurgeTotals:
    """Purge what the retention policies let go at ``now``, finishing purges a crash left first.

    Parameters
    ----------
    settings : Settings
        Database, folders and ``retention``.
    now : datetime
        The time the policies' days count to.
    actor : str
        Who runs it, for the audit.
    progress : callable, optional
        Called with (studies done, studies marked) after each study.
    reason : str, optional
        Why it runs (``schedule``), for the audit.
    measure : callable, optional
        Reads the row-derived counters of ``/metrics``
        (:func:`integration.web.ops.purge_totals.counter_reader`): what each study's rows added to them is kept
        in ``purge_totals`` so no counter goes down.  Every purge that runs in production passes it.

    Returns
    -------
    PurgeTotals
        What was removed.
    """
    totals = PurgeTotals()
    with session_scope(settings.database_url) as session:
        totals.resumed = len(marked_purges(session))
    mark_eligible(settings, now)
    with session_scope(settings.database_url) as session:
        purge_ids = [p.id for p in marked_purges(session)]
    for done, purge_id in enumerate(purge_ids, 1):
        finish(settings, purge_id, totals, actor=actor, measure=measure)
        if progress is not None:
            progress(done, len(purge_ids))
    audit_purge(settings, totals, actor=actor, reason=reason)
    return totals


def audit_purge(settings: Settings, totals: PurgeTotals, *, actor: str, reason: str | None = None) -> None:
    """Audit a purge's counts (``retention.purge``, with why it ran when given) and log them.

    A scheduled run that removed nothing leaves no event (the trail would get one an hour for nothing).
    """
    if reason == "schedule" and not totals.studies:
        log.debug("scheduled retention purge: nothing to purge")
        return
    detail: dict[str, int | str] = dict(totals.audit_detail())
    if reason is not None:
        detail["reason"] = reason
    with session_scope(settings.database_url) as session:
        add_event(session, actor=actor, action="retention.purge", detail=detail)
    log.info("retention purge: %s", detail)


def purge_study(
    settings: Settings,
    candidate: Candidate,
    now: datetime,
    totals: PurgeTotals,
    *,
    actor: str,
    measure: RowCounters | None = None,
) -> None:
    """Mark one eligible study (or take its mark left by a crash) and purge it (disk pressure: one at a time).

    Raises
    ------
    sqlalchemy.exc.OperationalError
        The study's row stayed locked for :data:`STUDY_LOCK_TIMEOUT_MS` (an instance of it is being stored,
        perhaps waiting for this very purge to make room): it keeps its mark and is finished by a later purge.
    """
    with session_scope(settings.database_url) as session:
        mark(session, [candidate], now)
        purge_id = session.scalar(select(StudyPurge.id).where(StudyPurge.study_id == candidate.study_id))
    if purge_id is not None:
        finish(settings, purge_id, totals, actor=actor, lock_timeout_ms=STUDY_LOCK_TIMEOUT_MS, measure=measure)


def finish(
    settings: Settings,
    purge_id: int,
    totals: PurgeTotals,
    *,
    actor: str = "system",
    lock_timeout_ms: int = 0,
    measure: RowCounters | None = None,
) -> None:
    """Step 2 for one marked study: lock it, delete its files, then its rows and its mark, and commit.

    ``lock_timeout_ms`` (PostgreSQL): give up (OperationalError) rather than wait longer for the study's row.
    ``measure``: the counters read before and after the rows go, their difference added to ``purge_totals``.
    """
    with session_scope(settings.database_url) as session:
        if lock_timeout_ms and session.get_bind().dialect.name == "postgresql":
            session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
        purge_row = lock_study(session, purge_id)
        if purge_row is None:
            return  # another purge finished it
        received_before = None
        if moved_on(session, purge_row):
            if _all_present(settings, files_of(session, purge_row, received_before=purge_row.marked_at)):
                call_off(session, purge_row)
                totals.called_off += 1
                add_event(
                    session,
                    actor=actor,
                    action="retention.called_off",
                    object_type="study",
                    object_id=purge_row.study_uid,
                    detail={"reason": "received an instance since it was marked"},
                )
                return
            received_before = purge_row.marked_at  # files are gone already: finish what the mark covered
        files = files_of(session, purge_row, received_before=received_before)
        study_uid, scope = purge_row.study_uid, purge_row.scope
        size = _remove_files(settings, study_uid, files, whole=scope is PurgeScope.STUDY and received_before is None)
        counted = measure(session.connection()) if measure is not None else {}
        instances = delete_marked_rows(session, purge_row, received_before=received_before)
        if measure is not None:
            add_purge_totals(session, removed_by(counted, measure(session.connection())))
        add_event(
            session,
            actor=actor,
            action="retention.purged",
            object_type="study",
            object_id=study_uid,
            detail={"scope": scope.value, "instances": instances, "report_files": len(files.data_paths)},
        )
    totals.studies += 1
    totals.whole_studies += scope is PurgeScope.STUDY
    totals.instances += instances
    totals.size_bytes += size
    totals.report_files += len(files.data_paths)


def _all_present(settings: Settings, files: StudyFiles) -> bool:
    roots = [(settings.instance_root, files.instance_paths), (settings.data_dir, files.data_paths)]
    return all((root / path).exists() for root, paths in roots for path in paths)


def _remove_files(settings: Settings, study_uid: str, files: StudyFiles, *, whole: bool) -> int:
    """Delete a study's files (a missing one is already gone) and its emptied folders; return the bytes freed."""
    freed = 0
    folders: set[Path] = set()
    for root, paths in (
        (settings.instance_root.resolve(), files.instance_paths),
        (settings.data_dir.resolve(), files.data_paths),
    ):
        for relative in paths:
            path = (root / relative).resolve()
            if not path.is_relative_to(root):
                log.warning("retention purge: a stored path leaves its folder; skipped")
                continue
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
            folders.add(path.parent)
    if whole and is_valid_uid(study_uid):
        shutil.rmtree(settings.data_dir / "reports" / study_uid, ignore_errors=True)  # rejection notes too
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        _remove_empty(folder, stop={settings.instance_root.resolve(), settings.data_dir.resolve()})
    return freed


def _remove_empty(folder: Path, stop: set[Path]) -> None:
    """Remove ``folder`` and its parents while they are empty, up to the store's roots."""
    while folder not in stop and folder.parent != folder:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty, or gone
        folder = folder.parent
