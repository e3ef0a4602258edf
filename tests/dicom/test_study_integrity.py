"""A study stays what its first instances made it: the real listener, dcmtk storescu, PostgreSQL and Redis.

An instance that reuses another study's Series Instance UID or SOP Instance UID is refused (0xA900) and
audited on the study it tried to join; a re-sent instance restarts a receiving study's idle timer, so a
study is not drafted from part of what the modality is still sending.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from integration.samples import write_ct_series
from integration.store.session import session_scope
from integration.store.users import create_site
from tests.support.peers import ListenerProcess, storescu, wait_until
from tests.support.raw_dicom import send_raw, study_states
from tests.support.records import db_rows


def rewritten(source: Path, target: Path, **values: str) -> Path:
    ds = pydicom.dcmread(source)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


def test_an_instance_reusing_another_studys_series_or_sop_instance_is_refused_and_audited(
    listener: ListenerProcess, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)
    assert storescu(listener.port, series).returncode == 0
    first = pydicom.dcmread(series[0], stop_before_pixels=True)
    victim = str(first.StudyInstanceUID)
    files_before = listener.stored_files()

    same_series = rewritten(
        series[0], tmp_path / "series.dcm", StudyInstanceUID=generate_uid(), SOPInstanceUID=generate_uid()
    )
    same_instance = rewritten(
        series[1], tmp_path / "instance.dcm", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid()
    )
    assert send_raw(listener.port, same_series) == 0xA900
    assert send_raw(listener.port, same_instance) == 0xA900

    assert list(study_states(listener.database_url)) == [victim]  # no placeholder study either
    assert db_rows(listener.database_url, "SELECT count(*) FROM instances") == [(3,)]
    assert listener.stored_files() == files_before
    assert listener.partial_files() == []
    events = db_rows(
        listener.database_url,
        "SELECT actor, object_id, detail->>'conflict' FROM audit_events WHERE action = 'instance.refused' ORDER BY id",
    )
    assert events == [("ae:STORESCU", victim, "series"), ("ae:STORESCU", victim, "instance")]


def test_a_re_sent_instance_restarts_the_idle_timer_so_the_study_is_drafted_once_whole(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    listener = listener_factory(migrated_postgres_url, redis_url, stable_seconds=2.0)
    series = write_ct_series(tmp_path / "ct", 10, rows=32, columns=32)
    assert storescu(listener.port, series[:5]).returncode == 0
    for _ in range(4):  # 4 s of re-sends: twice the idle time, with no new instance
        time.sleep(1.0)
        assert storescu(listener.port, series[:1]).returncode == 0
    assert list(study_states(listener.database_url).values()) == [("receiving", 1)]
    assert storescu(listener.port, series[5:]).returncode == 0

    wait_until(
        lambda: list(study_states(listener.database_url).values()) == [("queued", 1)],
        timeout=30,
        message="study queued",
    )
    assert db_rows(listener.database_url, "SELECT study_version FROM analysis_jobs") == [(1,)]
    assert db_rows(listener.database_url, "SELECT count(*), min(study_version) FROM instances") == [(10, 1)]


def test_a_full_re_send_after_the_listener_was_killed_and_away_gives_one_draft_of_everything(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "listener"
    first = listener_factory(migrated_postgres_url, redis_url, data_dir=data_dir, stable_seconds=3.0)
    series = write_ct_series(tmp_path / "ct", 40, rows=32, columns=32)
    assert storescu(first.port, series[:20]).returncode == 0
    first.kill()
    time.sleep(4.0)  # away for longer than the idle time: the stored timer ran out meanwhile
    second = listener_factory(migrated_postgres_url, redis_url, data_dir=data_dir, stable_seconds=3.0, port=first.port)
    assert storescu(second.port, series).returncode == 0  # the modality re-sends the whole study

    wait_until(
        lambda: list(study_states(migrated_postgres_url).values()) == [("queued", 1)],
        timeout=30,
        message="study queued once",
    )
    assert db_rows(migrated_postgres_url, "SELECT study_version FROM analysis_jobs") == [(1,)]
    assert db_rows(migrated_postgres_url, "SELECT count(*), max(study_version) FROM instances") == [(40, 1)]
    assert "idle timers restarted for 1 studies still receiving" in second.log()


def test_an_instance_naming_another_patient_is_refused_and_the_study_keeps_its_patient(
    listener: ListenerProcess, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)
    originals = [
        rewritten(path, tmp_path / f"north{i}.dcm", PatientName="NORTH^ALICE") for i, path in enumerate(series)
    ]
    assert storescu(listener.port, originals[:2]).returncode == 0
    study = str(pydicom.dcmread(originals[0], stop_before_pixels=True).StudyInstanceUID)

    relabelled = rewritten(series[2], tmp_path / "evil.dcm", PatientName="EVIL^C")
    other_id = rewritten(series[2], tmp_path / "other-id.dcm", PatientName="NORTH^ALICE", PatientID="X-999")
    assert send_raw(listener.port, relabelled) == 0xA900
    assert send_raw(listener.port, other_id) == 0xA900
    # The same patient written differently (letter case, empty trailing name components) is the same patient.
    same = rewritten(series[2], tmp_path / "same.dcm", PatientName="north^alice^^")
    assert send_raw(listener.port, same) == 0x0000

    assert db_rows(listener.database_url, "SELECT count(*) FROM instances") == [(3,)]
    events = db_rows(
        listener.database_url,
        "SELECT object_id, detail->>'conflict' FROM audit_events WHERE action = 'instance.refused' ORDER BY id",
    )
    assert events == [(study, "patient"), (study, "patient")]
    wait_until(
        lambda: db_rows(listener.database_url, "SELECT state FROM studies") == [("queued",)],
        timeout=30,
        message="study queued",
    )
    [(name,)] = db_rows(listener.database_url, "SELECT patient_name FROM studies")
    assert name.upper().rstrip("^") == "NORTH^ALICE"  # the worklist never shows the relabelled patient


def test_a_studys_site_is_fixed_by_its_first_sender_and_other_sites_senders_are_refused(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    with session_scope(migrated_postgres_url) as session:
        north, south = (create_site(session, code, code.title()).id for code in ("NORTH", "SOUTH"))
    calling_aes = {"CT_NORTH": {"site": "NORTH"}, "CT_SOUTH": {"site": "SOUTH"}, "PACS": {}}
    listener = listener_factory(migrated_postgres_url, redis_url, calling_aes=calling_aes, stable_seconds=30.0)
    series = write_ct_series(tmp_path / "ct", 4, rows=32, columns=32)
    assert storescu(listener.port, series[:2], calling_ae="CT_NORTH").returncode == 0
    study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    # Inside the stable window, as the attack did: the study is still receiving.
    assert db_rows(migrated_postgres_url, "SELECT state, site_id FROM studies") == [("receiving", north)]

    assert send_raw(listener.port, series[2], calling_ae="CT_SOUTH") == 0x0124
    assert send_raw(listener.port, series[3], calling_ae="PACS") == 0x0124  # no site is not every site
    assert send_raw(listener.port, series[2], calling_ae="CT_NORTH") == 0x0000

    assert db_rows(migrated_postgres_url, "SELECT site_id, calling_ae FROM studies") == [(north, "CT_NORTH")]
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(3,)]
    events = db_rows(
        migrated_postgres_url,
        "SELECT actor, object_id, detail->>'conflict' FROM audit_events WHERE action = 'instance.refused' ORDER BY id",
    )
    assert events == [("ae:CT_SOUTH", study, "site"), ("ae:PACS", study, "site")]

    # A study opened by a sender without a site stays without one: a site's sender cannot claim it.
    unsited = write_ct_series(tmp_path / "ct2", 2, rows=32, columns=32)
    assert storescu(listener.port, unsited[:1], calling_ae="PACS").returncode == 0
    assert send_raw(listener.port, unsited[1], calling_ae="CT_SOUTH") == 0x0124
    other = str(pydicom.dcmread(unsited[0], stop_before_pixels=True).StudyInstanceUID)
    assert db_rows(migrated_postgres_url, f"SELECT site_id FROM studies WHERE study_uid = '{other}'") == [(None,)]
    assert south not in {row[0] for row in db_rows(migrated_postgres_url, "SELECT site_id FROM studies")}
