"""Recording received instances: one short transaction per instance.

The transaction upserts the study (restarting its idle timer and, for a late
arrival, bumping its version), upserts the series and inserts the instance.
A SOP Instance UID already present is reported as a duplicate and changes
nothing.  On PostgreSQL the three writes are one statement (data-modifying
CTEs), so an instance costs one round trip plus the commit; SQLite runs them
one by one (it is in-process, round trips are free).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, case
from sqlalchemy.dialects import sqlite

from integration.dicom.header import InstanceHeader
from integration.store.tables import Instance, Series, Study, StudyState


@dataclass(frozen=True)
class Receipt:
    """What a commit of one instance did.

    Attributes
    ----------
    study_id : int
        Row id of the study.
    study_version : int
        Version the instance belongs to.
    duplicate : bool
        True when the SOP instance was already stored (nothing changed).
    """

    study_id: int
    study_version: int
    duplicate: bool


#: Driver-level SQL (psycopg named parameters): it skips SQLAlchemy's statement compilation on the hot path.
_POSTGRES_RECORD = """
    WITH study AS (
        INSERT INTO studies (study_uid, state, version, calling_ae, first_received_at, last_received_at,
                             stable_after, updated_at)
        VALUES (%(study_uid)s, 'receiving', 1, %(calling_ae)s, %(now)s, %(now)s, %(stable_after)s, %(now)s)
        ON CONFLICT (study_uid) DO UPDATE SET
            version = CASE WHEN studies.state <> 'receiving' THEN studies.version + 1 ELSE studies.version END,
            state = 'receiving',
            last_received_at = excluded.last_received_at,
            stable_after = excluded.stable_after,
            calling_ae = excluded.calling_ae,
            updated_at = excluded.updated_at
        RETURNING id, version
    ), series_row AS (
        INSERT INTO series (series_uid, study_id, modality, body_part, series_number)
        SELECT %(series_uid)s, study.id, %(modality)s, %(body_part)s, %(series_number)s FROM study
        ON CONFLICT (series_uid) DO UPDATE SET series_uid = excluded.series_uid
        RETURNING id
    ), instance_row AS (
        INSERT INTO instances (sop_instance_uid, sop_class_uid, series_id, study_version, instance_number,
                               storage_path, size_bytes, transfer_syntax_uid, calling_ae, received_at)
        SELECT %(sop_instance_uid)s, %(sop_class_uid)s, series_row.id, study.version, %(instance_number)s,
               %(storage_path)s, %(size_bytes)s, %(transfer_syntax_uid)s, %(calling_ae)s, %(now)s
        FROM series_row, study
        ON CONFLICT (sop_instance_uid) DO NOTHING
        RETURNING id
    )
    SELECT study.id, study.version, (SELECT count(*) FROM instance_row) FROM study
    """


def record_instance(
    connection: Connection,
    header: InstanceHeader,
    *,
    storage_path: str,
    size_bytes: int,
    calling_ae: str,
    received_at: datetime,
    stable_seconds: float,
    before_commit: Callable[[Receipt], bool] | None = None,
) -> Receipt:
    """Add one received instance to the study it belongs to, and commit.

    The rows are written first and committed only when ``before_commit``
    agrees, so the caller can make its file durable while the database works.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        Open connection (no transaction in progress).
    header : InstanceHeader
        The instance's validated header.
    storage_path : str
        Its path in the instance store.
    size_bytes : int
        Size of the stored file.
    calling_ae : str
        The sender's AE title.
    received_at : datetime
        Arrival time (aware, UTC).
    stable_seconds : float
        Idle time after which the study is complete.
    before_commit : callable, optional
        Called with the provisional receipt before committing; returning False
        rolls back, raising rolls back and propagates.

    Returns
    -------
    Receipt
        The study and version the instance joined, or ``duplicate=True``
        (in which case nothing was committed).
    """
    params: dict[str, Any] = {
        "study_uid": header.study_uid,
        "series_uid": header.series_uid,
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "modality": header.modality,
        "body_part": header.body_part,
        "series_number": header.series_number,
        "instance_number": header.instance_number,
        "storage_path": storage_path,
        "size_bytes": size_bytes,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "calling_ae": calling_ae,
        "now": received_at,
        "stable_after": received_at + timedelta(seconds=stable_seconds),
    }
    if connection.dialect.name == "postgresql":
        study_id, version, inserted = connection.exec_driver_sql(_POSTGRES_RECORD, params).one()
    else:
        study_id, version, inserted = _record_stepwise(connection, params)
    receipt = Receipt(study_id, version, duplicate=not inserted)
    try:
        keep = before_commit(receipt) if before_commit is not None else True
    except BaseException:
        connection.rollback()
        raise
    if receipt.duplicate or not keep:
        connection.rollback()
    else:
        connection.commit()
    return receipt


def _record_stepwise(connection: Connection, p: dict[str, Any]) -> tuple[int, int, int]:
    studies, series, instances = (cast(Table, m.__table__) for m in (Study, Series, Instance))
    late = studies.c.state != StudyState.RECEIVING.value
    study_stmt = (
        sqlite.insert(studies)
        .values(
            study_uid=p["study_uid"],
            state=StudyState.RECEIVING.value,
            version=1,
            calling_ae=p["calling_ae"],
            first_received_at=p["now"],
            last_received_at=p["now"],
            stable_after=p["stable_after"],
            updated_at=p["now"],
        )
        .on_conflict_do_update(
            index_elements=[studies.c.study_uid],
            set_={
                "version": case((late, studies.c.version + 1), else_=studies.c.version),
                "state": StudyState.RECEIVING.value,
                "last_received_at": p["now"],
                "stable_after": p["stable_after"],
                "calling_ae": p["calling_ae"],
                "updated_at": p["now"],
            },
        )
        .returning(studies.c.id, studies.c.version)
    )
    study_id, version = connection.execute(study_stmt).one()
    series_stmt = (
        sqlite.insert(series)
        .values(
            series_uid=p["series_uid"],
            study_id=study_id,
            modality=p["modality"],
            body_part=p["body_part"],
            series_number=p["series_number"],
        )
        .on_conflict_do_update(index_elements=[series.c.series_uid], set_={"series_uid": p["series_uid"]})
        .returning(series.c.id)
    )
    series_id = connection.execute(series_stmt).scalar_one()
    instance_stmt = (
        sqlite.insert(instances)
        .values(
            sop_instance_uid=p["sop_instance_uid"],
            sop_class_uid=p["sop_class_uid"],
            series_id=series_id,
            study_version=version,
            instance_number=p["instance_number"],
            storage_path=p["storage_path"],
            size_bytes=p["size_bytes"],
            transfer_syntax_uid=p["transfer_syntax_uid"],
            calling_ae=p["calling_ae"],
            received_at=p["now"],
        )
        .on_conflict_do_nothing(index_elements=[instances.c.sop_instance_uid])
        .returning(instances.c.id)
    )
    inserted = connection.execute(instance_stmt).scalar_one_or_none()
    return study_id, version, 0 if inserted is None else 1
