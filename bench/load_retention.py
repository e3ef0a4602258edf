"""``python -m bench.load --retention``: the load benchmark with retention active and the store nearly full.

Before the load, as many studies as the load sends (``seed``) are sent, drafted by the worker and signed
(in the rows, as the review app signs), so they are eligible under a policy that lets read studies' images
go at once (``instance_days: 0``).  The listener runs under a storage quota of one and a half times the
load's bytes plus twice the headroom: the load cannot fit beside every seed study, so the purge loop (and
the intake's purge before a refusal) must purge seed studies *while* the load is sending.  Afterwards the
load's studies (never read, so never eligible) are counted: ``lost`` is every load instance without its row
or its file, and must be 0; the summary line gains ``lost=<n> purged=<studies>``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.processes import BenchError


class Deploy(Protocol):
    """What this module uses of :class:`bench.load.Deployment`."""

    database_url: str
    data_dir: Path
    dicom_port: int


@dataclass(frozen=True)
class RetentionPlan:
    """The quota and marks of a retention run, from the bytes the seed and the load send.

    Attributes
    ----------
    seed_bytes, load_bytes : int
        What the seed studies and the load hold.
    quota_bytes, min_free_bytes, purge_free_bytes : int
        The listener's ``PACSVLM_STORAGE_QUOTA_BYTES``, ``MIN_FREE_BYTES`` and ``PURGE_FREE_BYTES``.
    """

    seed_bytes: int
    load_bytes: int
    quota_bytes: int
    min_free_bytes: int
    purge_free_bytes: int

    def env(self) -> dict[str, str]:
        """The listener's settings: the policy, the quota, the marks, a quick purge loop."""
        return {
            "PACSVLM_RETENTION": json.dumps([{"site": "*", "source": "*", "instance_days": 0}]),
            "PACSVLM_STORAGE_QUOTA_BYTES": str(self.quota_bytes),
            "PACSVLM_MIN_FREE_BYTES": str(self.min_free_bytes),
            "PACSVLM_PURGE_FREE_BYTES": str(self.purge_free_bytes),
            "PACSVLM_PURGE_CHECK_SECONDS": "0.5",
            "PACSVLM_STORAGE_USAGE_RECOUNT_SECONDS": "10",
        }


def plan(seed: Sequence[Sequence[Path]], load: Sequence[Sequence[Path]]) -> RetentionPlan:
    """Size the quota so the load fits only once part of the seed is purged."""
    seed_bytes = sum(path.stat().st_size for files in seed for path in files)
    load_bytes = sum(path.stat().st_size for files in load for path in files)
    min_free = max(1_000_000, load_bytes // 20)
    quota = load_bytes + seed_bytes // 2 + 2 * min_free
    return RetentionPlan(seed_bytes, load_bytes, quota, min_free, 3 * min_free)


def study_uids(studies: Sequence[Sequence[Path]]) -> list[str]:
    """The Study Instance UID of each study (from its first file's header)."""
    import pydicom

    return [str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) for files in studies]


def _query(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def seed_and_sign(
    deploy: Deploy,
    seed: Sequence[Sequence[Path]],
    send: Callable[[int, Sequence[Path], threading.Barrier], Any],
    timeout: float,
    worker_running: Callable[[], bool],
) -> None:
    """Send the seed studies, wait for their drafts, and sign them (eligible from then on).

    Raises
    ------
    BenchError
        A seed instance was refused, or the drafts did not come within ``timeout``.
    """
    barrier = threading.Barrier(len(seed))
    with ThreadPoolExecutor(len(seed)) as pool:
        results = [f.result() for f in [pool.submit(send, deploy.dicom_port, files, barrier) for files in seed]]
    if any(status != 0 for result in results for status in result.statuses):
        raise BenchError("a seed instance was refused before the load began")
    uids = study_uids(seed)
    deadline = time.monotonic() + timeout
    while len(_drafted(deploy.database_url, uids)) < len(uids):
        if time.monotonic() > deadline or not worker_running():
            raise BenchError("the seed studies were not drafted in time")
        time.sleep(0.5)
    from sqlalchemy import select

    from integration.store.session import session_scope
    from integration.store.tables import (
        Report,
        ReportRevision,
        ReportStatus,
        RevisionStatus,
        Study,
        StudyState,
        utcnow,
    )

    with session_scope(deploy.database_url) as session:
        for report, study in session.execute(
            select(Report, Study).join(Study, Study.id == Report.study_id).where(Study.study_uid.in_(uids))
        ):
            report.status = ReportStatus.SIGNED
            study.state = StudyState.SIGNED
            session.add(
                ReportRevision(
                    report_id=report.id,
                    version=2,
                    status=RevisionStatus.SIGNED,
                    findings=report.findings,
                    text=report.text,
                    author="bench",
                    organization="bench",
                    created_at=utcnow(),
                )
            )


def _drafted(url: str, uids: list[str]) -> list[tuple[object, ...]]:
    return _query(
        url,
        "SELECT s.id, count(r.id) FROM studies s JOIN reports r ON r.study_id = s.id "
        "WHERE s.study_uid = ANY(:uids) GROUP BY s.id",
        uids=uids,
    )


@dataclass(frozen=True)
class LoadCount:
    """The load's studies after the run: rows, distinct SOP UIDs, files, drafts; lost instances; purges."""

    rows: int
    distinct: int
    files: int
    drafts: list[tuple[object, ...]]
    lost: int
    purged_studies: int
    purges: int


def count_load(deploy: Deploy, load: Sequence[Sequence[Path]], expected: int) -> LoadCount:
    """Count what the listener holds of the load's studies (only theirs: seed studies come and go)."""
    uids = study_uids(load)
    held = _query(
        deploy.database_url,
        "SELECT i.sop_instance_uid, i.storage_path FROM instances i JOIN series se ON se.id = i.series_id "
        "JOIN studies s ON s.id = se.study_id WHERE s.study_uid = ANY(:uids)",
        uids=uids,
    )
    root = deploy.data_dir / "instances"
    files = sum((root / str(path)).is_file() for _, path in held)
    distinct = len({sop for sop, _ in held})
    purges = _query(
        deploy.database_url,
        "SELECT count(*), coalesce(sum(CAST(detail->>'studies' AS integer)), 0) FROM audit_events "
        "WHERE action = 'retention.purge'",
    )[0]
    return LoadCount(
        rows=len(held),
        distinct=distinct,
        files=files,
        drafts=_drafted(deploy.database_url, uids),
        lost=expected - min(distinct, files),
        purged_studies=int(str(purges[1])),
        purges=int(str(purges[0])),
    )


def table_rows(retention: RetentionPlan | None, held: LoadCount | None) -> list[tuple[str, str]]:
    """The benchmark table's rows of a retention run (none otherwise)."""
    if retention is None or held is None:
        return []
    return [
        (
            "storage quota / seed / load (MB)",
            f"{retention.quota_bytes / 1e6:.1f} / {retention.seed_bytes / 1e6:.1f} / {retention.load_bytes / 1e6:.1f}",
        ),
        ("seed studies purged (purges)", f"{held.purged_studies} ({held.purges})"),
        ("load instances lost", str(held.lost)),
    ]
