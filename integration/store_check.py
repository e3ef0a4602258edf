"""``pacs-vlm store check``: rows without files and files without rows, reported and (with repair) fixed.

What each finding means and what repair does, as a PACS administrator would want it:

- ``orphan_file``: a file in the instance store no instance row names (a crash between link and commit,
  a purge whose rows went but whose unlink was lost).  Repair deletes it only when older than
  ``store_check_grace_seconds``: a file being written right now has no row yet.
- ``missing_instance``: an instance row whose file is gone.  A study under a purge is finished by the purge;
  a live study (receiving, queued, running, held or awaiting review) is reported only -- its images must be
  sent again, never silently dropped; on a study whose reading is over, repair deletes the row (and an
  emptied series) so viewers and exports stop offering an image we do not hold, audited.
- ``missing_report_file``: a draft's or signed version's SR, or a TID 1500/KOS object, whose file is gone.
  Repair clears the path (the object keeps its UIDs; the catalog lists only written files, and the object
  can be written again from its rows).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, exists, select, update

from integration.config import Settings
from integration.purge import PurgeTotals, finish
from integration.store.audit import add_event
from integration.store.retention import live_studies
from integration.store.retention_tables import StudyPurge
from integration.store.session import session_scope
from integration.store.tables import Instance, Report, ReportRevision, Series, Study
from integration.store.viewer_tables import ReportObject


@dataclass(frozen=True)
class Problem:
    """One inconsistency: its kind, the file's path (relative to its folder), and what repair did or would do."""

    kind: str
    path: str
    study_uid: str | None
    action: str


@dataclass
class CheckResult:
    """What a check found and, with repair, fixed."""

    files: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: int = 0

    def counts(self) -> dict[str, int]:
        """Problems per kind, for the audit and the summary line."""
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return counts


def _stored_files(root: Path) -> list[str]:
    """Return every file under the instance store, relative, skipping the intake's own folders (``.*``)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [(Path(folder) / name).relative_to(root).as_posix() for name in names if not name.startswith(".")]
    return found


def check_store(settings: Settings, *, repair: bool = False, actor: str = "system") -> CheckResult:
    """Compare the instance store and the report files with their rows; with ``repair``, fix what is safe.

    Parameters
    ----------
    settings : Settings
        Database, folders and ``store_check_grace_seconds``.
    repair : bool
        Fix what the module docstring says; otherwise only report.
    actor : str
        Who runs it, for the audit of a repair.

    Returns
    -------
    CheckResult
        What was found (and fixed).
    """
    result = CheckResult()
    root = settings.instance_root.resolve()
    files = _stored_files(root)
    result.files = len(files)
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Instance.id, Instance.storage_path, Study.id, Study.study_uid)
            .join(Series, Series.id == Instance.series_id)
            .join(Study, Study.id == Series.study_id)
        ).all()
        marked = {
            study_id: purge_id for purge_id, study_id in session.execute(select(StudyPurge.id, StudyPurge.study_id))
        }
        live = live_studies(session)
        reports: list[tuple[str, int, str, str | None]] = [
            ("report", r.id, r.sr_path, uid)
            for r, uid in session.execute(select(Report, Study.study_uid).join(Study, Study.id == Report.study_id))
            if r.sr_path
        ]
        reports += [("revision", r.id, r.sr_path, None) for r in session.scalars(select(ReportRevision)) if r.sr_path]
        reports += [("object", o.id, o.path, o.study_uid) for o in session.scalars(select(ReportObject)) if o.path]
    result.rows = len(rows) + len(reports)
    named = {path for _, path, _, _ in rows}
    cutoff = time.time() - settings.store_check_grace_seconds
    for path in sorted(set(files) - named):
        old = (root / path).stat().st_mtime < cutoff if (root / path).exists() else False
        action = ("deleted" if repair else "would delete") if old else "kept (younger than the grace period)"
        result.problems.append(Problem("orphan_file", path, None, action))
        if repair and old:
            (root / path).unlink(missing_ok=True)
            result.repaired += 1
    present = set(files)
    finish_ids: set[int] = set()
    drop: list[int] = []
    for instance_id, path, study_id, study_uid in rows:
        if path in present:
            continue
        if study_id in marked:
            action = "purge under way: finished" if repair else "purge under way"
            finish_ids.add(marked[study_id])
        elif study_id in live:
            action = "reported only (live study: send the image again)"
        else:
            action = "row deleted" if repair else "would delete the row"
            drop.append(instance_id)
        result.problems.append(Problem("missing_instance", path, study_uid, action))
    for kind, row_id, data_path, report_study in reports:
        if not (settings.data_dir / data_path).exists():
            action = "path cleared" if repair else "would clear the path"
            result.problems.append(Problem("missing_report_file", data_path, report_study, action))
            if repair:
                _clear_path(settings, kind, row_id)
                result.repaired += 1
    if repair:
        for purge_id in sorted(finish_ids):
            finish(settings, purge_id, PurgeTotals(), actor=actor)
        result.repaired += len(finish_ids) + len(drop)
        with session_scope(settings.database_url) as session:
            if drop:
                emptied = set(session.scalars(select(Instance.series_id).where(Instance.id.in_(drop))).all())
                session.execute(delete(Instance).where(Instance.id.in_(drop)))
                session.execute(
                    delete(Series).where(Series.id.in_(emptied), ~exists().where(Instance.series_id == Series.id))
                )
            if result.problems:
                add_event(
                    session, actor=actor, action="store.repair", detail=result.counts() | {"repaired": result.repaired}
                )
    return result


def _clear_path(settings: Settings, kind: str, row_id: int) -> None:
    table = {"report": Report, "revision": ReportRevision}.get(kind)
    with session_scope(settings.database_url) as session:
        if table is Report:
            session.execute(update(Report).where(Report.id == row_id).values(sr_path=None))
        elif table is ReportRevision:
            session.execute(update(ReportRevision).where(ReportRevision.id == row_id).values(sr_path=None))
        else:
            session.execute(update(ReportObject).where(ReportObject.id == row_id).values(path=None))
