"""Putting instances into the store and its rows the way the listener does, without a network hop."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pydicom

from integration.config import Settings
from integration.intake.header import InstanceHeader
from integration.intake.storage import InstanceStore
from integration.store.ingest import record_instance
from integration.store.session import engine_for
from integration.store.tables import ROLE_CURRENT


def ingest(
    settings: Settings,
    path: Path,
    received_at: datetime,
    calling_ae: str = "CT1",
    *,
    site_id: int | None = None,
    role: str = ROLE_CURRENT,
) -> pydicom.Dataset:
    """Store a file in the instance store and record it, as the listener does; return its header.

    ``site_id`` and ``role`` are as :func:`integration.store.ingest.record_instance` takes them: a prior
    study's instances, as the prior fetcher's intake stores them, are ``role=ROLE_PRIOR`` of the site the
    study was reserved for.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = InstanceHeader(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=str(ds.Modality),
        series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
        instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
    )
    store = InstanceStore(settings.instance_root, fsync=False)
    try:
        relative = store.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        stored = store.write(relative, [path.read_bytes()])
    finally:
        store.close()
    with engine_for(settings.database_url).connect() as connection:
        record_instance(
            connection,
            header,
            storage_path=stored.relative_path,
            size_bytes=stored.size_bytes,
            calling_ae=calling_ae,
            received_at=received_at,
            stable_seconds=settings.stable_seconds,
            site_id=site_id,
            role=role,
        )
    return ds
