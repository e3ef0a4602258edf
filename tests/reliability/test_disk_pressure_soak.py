"""Soak: a sender keeps sending into the real listener while a small volume fills past the purge mark.

The volume is a real 3 MB tmpfs where one can be mounted (root), and in every case pacs-vlm's storage quota
(``PACSVLM_STORAGE_QUOTA_BYTES``, the product feature a hospital uses for its share of a larger volume, which
needs no root): there the listener's free space is the quota less what its store holds.  Studies are read
(signed or rejected, as a radiologist would, written to the rows: no model runs here) two studies behind
the sender, with a retention policy that lets read studies' images go at once; two studies are never read.
The store takes several times its quota in all, so the listener must purge as it goes: nothing may be
refused, nothing unread lost, and ``pacs-vlm store check`` finds the store and the rows agree afterwards.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select, update

from integration.intake.space import used_bytes
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    AuditEvent,
    Instance,
    JobState,
    Report,
    ReportStatus,
    Series,
    Study,
    StudyState,
)
from tests.support.peers import SCU_AE, ListenerProcess
from tests.support.report_rows import reading_revision, report_row

STUDIES = 24
PER_STUDY = 8  # CT_small: about 39 kB each, so a study is about 316 kB
QUOTA = 3_000_000  # the studies sent hold two and a half times this
MIN_FREE = 300_000
PURGE_FREE = 900_000
NEVER_READ = {1, 5}  # awaiting review for ever: never purged, though they are among the oldest
LAG = 2  # a study is read once two later ones were sent


@pytest.fixture(params=["tmpfs", "quota"])
def volume(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The listener's settings of a small volume: a mounted tmpfs of the quota's size, or the quota."""
    if request.param == "quota":
        yield {"PACSVLM_STORAGE_QUOTA_BYTES": str(QUOTA)}
        return
    mount = tmp_path / "volume"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={QUOTA // 1024}k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield {"PACSVLM_STORAGE_DIR": str(mount / "instances")}
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


@pytest.fixture
def listener(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, volume: dict[str, str]
) -> Iterator[ListenerProcess]:
    process = ListenerProcess(
        tmp_path / "data",
        migrated_postgres_url,
        redis_url,
        stable_seconds=0.5,
        extra_env={
            "PACSVLM_FSYNC": "false",
            "PACSVLM_RETENTION": json.dumps([{"site": "*", "source": "*", "instance_days": 0}]),
            "PACSVLM_MIN_FREE_BYTES": str(MIN_FREE),
            "PACSVLM_PURGE_FREE_BYTES": str(PURGE_FREE),
            "PACSVLM_PURGE_HYSTERESIS_BYTES": str(MIN_FREE),
            "PACSVLM_PURGE_CHECK_SECONDS": "0.2",
            "PACSVLM_PURGE_INTERVAL_MINUTES": "0",  # only pressure purges here
            "PACSVLM_STORAGE_USAGE_RECOUNT_SECONDS": "2",
            **volume,
        },
    ).start()
    yield process
    process.stop()


def _study(index: int) -> list[pydicom.Dataset]:
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study_uid, series_uid = generate_uid(), generate_uid()
    instances: list[pydicom.Dataset] = []
    for n in range(PER_STUDY):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        ds.AccessionNumber = f"SOAK{index}"
        instances.append(ds)
    return instances


def _send(port: int, instances: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, pydicom.uid.ImplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title="PACSVLM")
    assert association.is_established
    try:
        return [int(association.send_c_store(ds).Status) for ds in instances]
    finally:
        association.release()


def _read(url: str, study_uid: str, *, sign: bool) -> None:
    """Sign or reject the study's draft once its job is queued (as the review app would, in the rows)."""
    deadline = time.monotonic() + 30
    while True:
        with session_scope(url) as session:
            study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
            if study.state is StudyState.QUEUED:
                session.execute(update(AnalysisJob).where(AnalysisJob.study_id == study.id).values(state=JobState.DONE))
                study.state = StudyState.SIGNED
                report = report_row(study, ReportStatus.SIGNED if sign else ReportStatus.REJECTED)
                session.add(report)
                session.flush()
                session.add(reading_revision(report))
                return
        assert time.monotonic() < deadline, f"study {study_uid} was never queued"
        time.sleep(0.1)


def _held(url: str, study_uid: str) -> list[str]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                select(Instance.storage_path)
                .join(Series, Series.id == Instance.series_id)
                .join(Study, Study.id == Series.study_id)
                .where(Study.study_uid == study_uid)
            ).all()
        )


def test_a_filling_volume_purges_read_studies_and_refuses_nothing(
    listener: ListenerProcess, migrated_postgres_url: str
) -> None:
    url = migrated_postgres_url
    root = Path(listener.env().get("PACSVLM_STORAGE_DIR") or listener.instance_root)
    sent: list[str] = []
    statuses: list[int] = []
    started = time.monotonic()
    for index in range(STUDIES):
        instances = _study(index)
        sent.append(str(instances[0].StudyInstanceUID))
        statuses += _send(listener.port, instances)
        behind = index - LAG
        if behind >= 0 and behind not in NEVER_READ:
            _read(url, sent[behind], sign=behind % 2 == 0)
        assert used_bytes(root) <= QUOTA  # the share is never overrun
    assert statuses == [0] * STUDIES * PER_STUDY, listener.log()[-3000:]  # nothing refused
    assert "refused" not in listener.log()

    unread = [sent[i] for i in NEVER_READ] + sent[-LAG:]
    for study_uid in unread:  # nothing lost that was not eligible: every row and its file
        paths = _held(url, study_uid)
        assert len(paths) == PER_STUDY, study_uid
        assert all((root / path).is_file() for path in paths)
    read = [uid for i, uid in enumerate(sent[:-LAG]) if i not in NEVER_READ]
    purged = [uid for uid in read if not _held(url, uid)]
    assert len(purged) >= len(read) // 2  # several times the quota went through: most read studies went
    assert all(not (root / uid).exists() for uid in purged)
    with session_scope(url) as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "retention.purge")).all()
        kept = session.scalar(select(func.count()).select_from(Report))
    details = [event.detail or {} for event in events]
    assert details and all(detail["reason"] == "disk pressure" for detail in details)
    assert sum(detail["studies"] for detail in details) == len(purged)
    assert kept == len(read)  # the images went, the reports stayed (no report_days)

    check = subprocess.run(
        [sys.executable, "-m", "worker.cli", "store", "check"],
        env={**listener.env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert time.monotonic() - started < 90
    assert os.path.isdir(root)
