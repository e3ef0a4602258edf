"""The listener against real peers: dcmtk storescu, PostgreSQL, Redis, and pynetdicom for malformed input."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pynetdicom import AE

from bench.wire import associate_rq
from integration.intake.header import file_meta_bytes
from integration.samples import BROKEN_SAMPLES, pydicom_test_file, write_ct_series, write_sample_studies
from tests.support.peers import ListenerProcess, storescu, storescu_each_syntax, wait_until
from tests.support.proxy import CuttableProxy
from tests.support.raw_dicom import (
    CT_IMAGE_STORAGE,
    command_set,
    dataset_bytes,
    raw_associate,
    read_raw_pdu,
    send_raw,
    study_states,
)
from tests.support.records import db_rows, queued_messages
from tests.support.services import Postgres, start_redis

ANALYZE_STUDY = "pacs_vlm.analyze_study"


def elements(ds: pydicom.Dataset) -> dict[int, object]:
    """Every data element's value, without group lengths and trailing padding."""
    return {int(e.tag): e.value for e in ds if e.tag.element != 0 and e.tag != 0xFFFCFFFC}


def with_meta(path: Path, dataset: bytes, sop_class: str, sop_instance: str, syntax: str) -> Path:
    path.write_bytes(file_meta_bytes(sop_class, sop_instance, syntax, "STORESCU") + dataset)
    return path


def test_samples_and_300_slice_ct_stored_byte_for_byte_assembled_and_queued(
    listener: ListenerProcess, redis_url: str, tmp_path: Path
) -> None:
    samples = write_sample_studies(tmp_path / "samples")
    series = write_ct_series(tmp_path / "ct", 300)
    results = [*storescu_each_syntax(listener.port, samples), storescu(listener.port, series)]
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]

    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in samples + series}
    stored = db_rows(
        listener.database_url,
        "SELECT i.sop_instance_uid, i.storage_path, i.size_bytes, i.transfer_syntax_uid, i.calling_ae, s.series_uid"
        " FROM instances i JOIN series s ON s.id = i.series_id",
    )
    assert {r[0] for r in stored} == set(sent)
    for sop_uid, storage_path, size, syntax, calling_ae, series_uid in stored:
        original = pydicom.dcmread(sent[sop_uid], stop_before_pixels=True)
        file = listener.instance_root / storage_path
        assert file.stat().st_size == size
        readback = pydicom.dcmread(file)
        # storescu normalises what it sends (drops group lengths and padding; implicit VR goes out as explicit),
        # so compare element by element here; test_raw_bytes_are_stored_exactly checks the bytes.
        assert elements(readback) == elements(pydicom.dcmread(sent[sop_uid])), sent[sop_uid].name
        if syntax != str(original.file_meta.TransferSyntaxUID):
            assert syntax == "1.2.840.10008.1.2.1", (sent[sop_uid].name, syntax)
        assert calling_ae == "STORESCU" and series_uid == original.SeriesInstanceUID
        assert readback.file_meta.MediaStorageSOPInstanceUID == sop_uid
        assert readback.PixelData == pydicom.dcmread(sent[sop_uid]).PixelData
    assert listener.partial_files() == []

    study_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in samples + series}
    wait_until(
        lambda: all(study_states(listener.database_url).get(uid, ("",))[0] == "queued" for uid in study_uids),
        timeout=60,
        message="every study queued",
    )
    jobs = db_rows(
        listener.database_url, "SELECT j.id, s.study_uid FROM analysis_jobs j JOIN studies s ON s.id = j.study_id"
    )
    assert sorted(uid for _, uid in jobs) == sorted(study_uids)  # exactly one job per study
    messages = queued_messages(redis_url)
    assert sorted(m["args"][0] for m in messages) == sorted(job_id for job_id, _ in jobs)
    assert {m["headers"]["task"] for m in messages} == {ANALYZE_STUDY}


def test_raw_bytes_are_stored_exactly(listener: ListenerProcess, tmp_path: Path) -> None:
    for source in write_sample_studies(tmp_path / "samples"):
        assert send_raw(listener.port, source) == 0, source.name
        sop_uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        [(storage_path,)] = db_rows(
            listener.database_url, "SELECT storage_path FROM instances WHERE sop_instance_uid = :uid", uid=sop_uid
        )
        assert dataset_bytes(listener.instance_root / storage_path) == dataset_bytes(source), source.name


def test_echo(listener: ListenerProcess) -> None:
    result = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "STORESCU", "-aec", "PACSVLM", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [
        ("INTRUDER", "PACSVLM", "calling AE not in the allowlist"),
        ("STORESCU", "SOMEONEELSE", "called AE is not ours"),
    ],
)
def test_unknown_calling_ae_or_wrong_called_ae_is_rejected(
    listener: ListenerProcess, calling: str, called: str, reason: str
) -> None:
    result = storescu(listener.port, [pydicom_test_file("CT_small.dcm")], calling_ae=calling, called_ae=called)
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    wait_until(lambda: reason in listener.log(), timeout=10, message="rejection log line")
    line = next(line for line in listener.log().splitlines() if reason in line)
    assert calling in line and "127.0.0.1" in line
    assert listener.stored_files() == []
    wait_until(
        lambda: (
            (f"ae:{calling}", "dicom.association.rejected")
            in db_rows(listener.database_url, "SELECT actor, action FROM audit_events")
        ),
        timeout=10,
        message="audit",
    )


def test_broken_files_and_path_traversal_uids_are_refused_and_leave_nothing(
    listener: ListenerProcess, tmp_path: Path
) -> None:
    statuses = {}
    for name in ("badVR.dcm", "MR_truncated.dcm"):
        statuses[name] = send_raw(listener.port, pydicom_test_file(name))
    no_meta = with_meta(
        tmp_path / "no_meta.dcm",
        pydicom_test_file("no_meta.dcm").read_bytes(),
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.4.5.6.7",
        "1.2.840.10008.1.2",
    )
    statuses["no_meta.dcm"] = send_raw(listener.port, no_meta)
    assert set(BROKEN_SAMPLES) <= set(statuses)

    source = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    with pydicom_config.disable_value_validation():
        for attribute, value in (
            ("StudyInstanceUID", "../../../../tmp/escaped"),
            ("SeriesInstanceUID", "1.2.3/../../x"),
            ("StudyInstanceUID", "1.2." + "9" * 70),
        ):
            ds = source.copy()
            setattr(ds, attribute, value)
            path = tmp_path / f"{attribute}-{len(statuses)}.dcm"
            ds.save_as(path, enforce_file_format=True)
            statuses[f"{attribute}={value}"] = send_raw(listener.port, path)

    assert statuses == {key: 0xC000 for key in statuses}, {k: hex(v) for k, v in statuses.items()}
    assert listener.stored_files() == [] and listener.partial_files() == []
    assert not Path("/tmp/escaped").exists()
    assert db_rows(listener.database_url, "SELECT count(*) FROM instances") == [(0,)]
    assert "refused" in listener.log()


def test_sop_class_mismatch_gets_its_own_status(listener: ListenerProcess, tmp_path: Path) -> None:
    ct = pydicom_test_file("CT_small.dcm")
    lying = with_meta(
        tmp_path / "lying.dcm",
        dataset_bytes(ct),
        "1.2.840.10008.5.1.4.1.1.4",  # claims MR storage
        str(pydicom.dcmread(ct).SOPInstanceUID),
        "1.2.840.10008.1.2.1",
    )
    assert send_raw(listener.port, lying) == 0xA900
    assert listener.stored_files() == []


def test_same_study_sent_twice_is_stored_once_and_queued_once(
    listener: ListenerProcess, redis_url: str, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "ct", 12, rows=64, columns=64)
    for _ in range(2):
        result = storescu(listener.port, series)
        assert result.returncode == 0, result.stderr
    wait_until(
        lambda: list(study_states(listener.database_url).values()) == [("queued", 1)],
        timeout=30,
        message="study queued",
    )
    result = storescu(listener.port, series)  # a third time, after the study was queued
    assert result.returncode == 0
    assert db_rows(listener.database_url, "SELECT count(*) FROM instances") == [(12,)]
    assert len(listener.stored_files()) == 12
    assert list(study_states(listener.database_url).values()) == [("queued", 1)]  # duplicates do not re-draft
    assert db_rows(listener.database_url, "SELECT count(*) FROM analysis_jobs") == [(1,)]
    assert len(queued_messages(redis_url)) == 1
    wait_until(lambda: "'duplicate': 12" in listener.log(), timeout=10, message="duplicates counted in the log")


def test_late_instance_bumps_the_version_and_supersedes_the_queued_job(
    listener: ListenerProcess, redis_url: str, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "ct", 6, rows=64, columns=64)
    assert storescu(listener.port, series[:5]).returncode == 0
    wait_until(
        lambda: list(study_states(listener.database_url).values()) == [("queued", 1)],
        timeout=30,
        message="version 1 queued",
    )
    assert storescu(listener.port, series[5:]).returncode == 0
    wait_until(
        lambda: list(study_states(listener.database_url).values()) == [("queued", 2)],
        timeout=30,
        message="version 2 queued",
    )
    jobs = db_rows(listener.database_url, "SELECT study_version, state FROM analysis_jobs ORDER BY id")
    assert jobs == [(1, "superseded"), (2, "queued")]
    assert db_rows(
        listener.database_url,
        "SELECT study_version, count(*) FROM instances GROUP BY study_version ORDER BY study_version",
    ) == [(1, 5), (2, 1)]
    assert len(queued_messages(redis_url)) == 2  # the version-1 message finds a superseded job and does nothing


def test_database_unreachable_gives_failure_statuses_then_recovers(
    listener_factory, migrated_postgres_url: str, redis_url: str, postgres: Postgres, tmp_path: Path
) -> None:
    proxy = CuttableProxy(postgres.host, postgres.port)
    try:
        database_url = migrated_postgres_url.replace(f":{postgres.port}/", f":{proxy.port}/")
        listener = listener_factory(database_url, redis_url)
        series = write_ct_series(tmp_path / "ct", 10, rows=64, columns=64)
        assert storescu(listener.port, series[:2]).returncode == 0  # healthy
        proxy.cut()
        failed = storescu(listener.port, series[2:], extra=["-v", "--no-halt"])
        assert failed.stderr.count("Refused: OutOfResources") == 8, failed.stderr[-800:]
        assert "database unavailable" in listener.log()
        assert len(listener.stored_files()) == 2 and listener.partial_files() == []
        proxy.restore()
        retried = storescu(listener.port, series, extra=["-v"])  # the sender retries everything after recovery
        assert retried.returncode == 0, retried.stderr[-800:]
        assert retried.stderr.count("(Success)") == 10
        assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(10,)]
        assert len(listener.stored_files()) == 10
    finally:
        proxy.close()


def test_listener_killed_mid_study_still_completes_the_study_once(
    listener_factory, migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "listener"
    first = listener_factory(migrated_postgres_url, redis_url, data_dir=data_dir, stable_seconds=3)
    series = write_ct_series(tmp_path / "ct", 20, rows=64, columns=64)
    assert storescu(first.port, series[:10]).returncode == 0
    first.kill()
    second = listener_factory(migrated_postgres_url, redis_url, data_dir=data_dir, stable_seconds=3, port=first.port)
    assert storescu(second.port, series[10:]).returncode == 0
    wait_until(
        lambda: list(study_states(migrated_postgres_url).values()) == [("queued", 1)],
        timeout=30,
        message="study queued after restart",
    )
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(20,)]
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM analysis_jobs") == [(1,)]
    assert len(queued_messages(redis_url)) == 1


def test_study_interrupted_by_a_crash_completes_after_restart_without_new_instances(
    listener_factory, migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "listener"
    first = listener_factory(migrated_postgres_url, redis_url, data_dir=data_dir, stable_seconds=4)
    assert storescu(first.port, write_ct_series(tmp_path / "ct", 5, rows=64, columns=64)).returncode == 0
    first.kill()  # before the idle timer ran out: the timer lives in the database
    assert list(study_states(migrated_postgres_url).values()) == [("receiving", 1)]
    listener_factory(migrated_postgres_url, redis_url, data_dir=data_dir, stable_seconds=4)
    wait_until(
        lambda: list(study_states(migrated_postgres_url).values()) == [("queued", 1)],
        timeout=30,
        message="study queued by the restarted listener",
    )
    assert len(queued_messages(redis_url)) == 1


def test_reconciler_resends_jobs_when_redis_restarts_without_persistence(
    listener_factory, migrated_postgres_url: str, tmp_path: Path
) -> None:
    broker = start_redis()
    try:
        url = broker.url(0)
        listener = listener_factory(migrated_postgres_url, url)
        assert storescu(listener.port, write_ct_series(tmp_path / "ct", 4, rows=64, columns=64)).returncode == 0
        wait_until(lambda: len(queued_messages(url)) == 1, timeout=30, message="job queued")
        broker.close()
        broker = start_redis(broker.port)  # a fresh server: the queue is gone (the reconciler may re-send at once)
        wait_until(lambda: len(queued_messages(url)) == 1, timeout=30, message="job re-sent by the reconciler")
        job_id = db_rows(migrated_postgres_url, "SELECT id FROM analysis_jobs")[0][0]
        [message] = queued_messages(url)
        assert message["args"] == [job_id]
        assert message["headers"]["id"] == f"analysis-job-{job_id}-2"  # the second send, not the lost first one
        assert db_rows(migrated_postgres_url, "SELECT send_count FROM analysis_jobs") == [(2,)]
        assert "broker restarted" in listener.log()
    finally:
        broker.close()


def test_embedded_defaults_sqlite_and_file_system_queue(listener_factory, tmp_path: Path) -> None:
    data_dir = tmp_path / "embedded"
    listener = listener_factory("", "", data_dir=data_dir)
    assert storescu(listener.port, [pydicom_test_file("CT_small.dcm")]).returncode == 0
    database_url = f"sqlite:///{data_dir / 'pacs-vlm.sqlite'}"
    wait_until(
        lambda: list(study_states(database_url).values()) == [("queued", 1)],
        timeout=30,
        message="study queued on embedded defaults",
    )
    messages = list((data_dir / "broker" / "queue").glob("*"))
    assert len(messages) == 1
    job_id = db_rows(database_url, "SELECT id FROM analysis_jobs")[0][0]
    body = json.loads(messages[0].read_text())
    assert body["headers"]["task"] == ANALYZE_STUDY and body["headers"]["argsrepr"] == f"[{job_id}]"
    assert len(listener.stored_files()) == 1


def test_association_limit_rejects_the_extra_association(listener_factory, migrated_postgres_url, redis_url) -> None:
    # pynetdicom keeps a bare TCP connection (our readiness probe) in its count until the ACSE timeout ends it.
    env = {"PACSVLM_MAX_ASSOCIATIONS": "2", "PACSVLM_MAX_ASSOCIATIONS_PER_AE": "2", "PACSVLM_ACSE_TIMEOUT": "1"}
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=env)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    time.sleep(2)
    held = [ae.associate("127.0.0.1", listener.port, ae_title="PACSVLM") for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        # by hand: pynetdicom's requestor may report an A-ASSOCIATE-RJ as an abort when its threads are
        # starved and the listener's close overtakes it, so read the answer PDU off the socket itself
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            sock.sendall(associate_rq("STORESCU", "PACSVLM"))
            pdu_type, body = read_raw_pdu(sock)
        assert pdu_type == 0x03, f"PDU type {pdu_type:#x}\n{listener.log()[-3000:]}"  # A-ASSOCIATE-RJ
        assert tuple(body[1:4]) == (2, 3, 2)  # rejected transient, by the presentation layer, local limit
    finally:
        for assoc in held:
            assoc.release()
    wait_until(lambda: "too many concurrent associations" in listener.log(), timeout=10, message="limit log line")
    again = ae.associate("127.0.0.1", listener.port, ae_title="PACSVLM")  # the released slots are free again
    assert again.is_established
    again.release()


def test_idle_association_is_closed_after_the_network_timeout(listener_factory, migrated_postgres_url, redis_url):
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env={"PACSVLM_NETWORK_TIMEOUT": "1"})
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="PACSVLM")
    assert assoc.is_established
    opened = time.monotonic()
    wait_until(lambda: not assoc.is_established, timeout=15, message="the listener to end the idle association")
    # ended by the listener's A-ABORT once idle for the timeout: not released, and not at once
    assert assoc.is_aborted and not assoc.is_released
    assert time.monotonic() - opened > 0.9
    wait_until(lambda: "idle past the timeout" in listener.log(), timeout=10, message="abort log line")


def test_storage_below_headroom_refuses_with_out_of_resources(
    listener_factory, migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env={"PACSVLM_MIN_FREE_BYTES": str(10**18)})
    result = storescu(listener.port, write_ct_series(tmp_path / "ct", 3, rows=64, columns=64), extra=["-v", "-nh"])
    assert result.stderr.count("Refused: OutOfResources") == 3, result.stderr[-800:]
    assert listener.stored_files() == [] and listener.partial_files() == []
    assert db_rows(listener.database_url, "SELECT count(*) FROM instances") == [(0,)]
    assert "storage headroom exhausted" in listener.log()
    ok = storescu(listener.port, [pydicom_test_file("CT_small.dcm")], extra=["-v"])  # listener still up
    assert "OutOfResources" in ok.stderr


# -- the upper-layer protocol with a raw socket (peers that break the protocol) ------------------------


def test_garbage_instead_of_an_association_request_is_dropped_and_the_listener_serves_on(
    listener: ListenerProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        pdu_type, _ = read_raw_pdu(sock)
        assert pdu_type in (0, 0x07)  # closed, or A-ABORT first
    wait_until(lambda: "unknown PDU type" in listener.log(), timeout=10, message="abort log line")
    assert storescu(listener.port, [pydicom_test_file("CT_small.dcm")]).returncode == 0


def test_a_pdu_above_our_maximum_length_aborts_the_association(listener: ListenerProcess) -> None:
    sock = raw_associate(listener.port)
    with sock:
        sock.sendall(b"\x04\x00" + (131072 + 100).to_bytes(4, "big") + bytes(64))
        pdu_type, body = read_raw_pdu(sock)
        assert (pdu_type, body[2]) == (0x07, 2)  # A-ABORT from the service provider
    wait_until(lambda: "exceeds the limit" in listener.log(), timeout=10, message="abort log line")


def test_an_unsupported_dimse_service_gets_unrecognized_operation(listener: ListenerProcess) -> None:
    sock = raw_associate(listener.port)
    with sock:
        command = command_set(0x0020, CT_IMAGE_STORAGE, dataset_follows=True)  # C-FIND-RQ on a storage context
        identifier = b"\x08\x00\x52\x00CS\x06\x00STUDY "
        for payload, control in ((command, 0x03), (identifier, 0x02)):
            item = (len(payload) + 2).to_bytes(4, "big") + bytes((1, control)) + payload
            sock.sendall(b"\x04\x00" + len(item).to_bytes(4, "big") + item)
        pdu_type, body = read_raw_pdu(sock)
        assert pdu_type == 0x04
        response = pydicom.filereader.read_dataset(io.BytesIO(body[6:]), is_implicit_VR=True, is_little_endian=True)
        assert (response.CommandField, response.Status, response.MessageIDBeingRespondedTo) == (0x8020, 0x0211, 3)
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert read_raw_pdu(sock)[0] == 0x06
    assert "is not supported" in listener.log()


def test_an_instance_above_the_size_limit_is_refused_and_not_stored(
    listener_factory, migrated_postgres_url: str, redis_url: str
) -> None:
    env = {"PACSVLM_MAX_INSTANCE_BYTES": "20000"}
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=env)
    result = storescu(listener.port, [pydicom_test_file("CT_small.dcm")], extra=["-v", "-nh"])
    assert "Refused: OutOfResources" in result.stderr, result.stderr[-800:]
    assert listener.stored_files() == [] and listener.partial_files() == []
    assert "exceeds the limit of 20000" in listener.log()
    ok = storescu(listener.port, [pydicom_test_file("MR_small.dcm")], extra=["-v"])  # 9.8 kB: stored
    assert "Received Store Response (Success)" in ok.stderr
