"""MPPS on the listener against real peers: pynetdicom as the modality (N-CREATE / N-SET), dcmtk storescu for
the instances, PostgreSQL and Redis.

The idle timer is set to 300 s, so a study that becomes ``stable`` within seconds was completed by its
procedure step, not by the timer.  Only the malformed data set is not sent by a real modality: pynetdicom's
encoder is swapped for one that returns broken bytes (no real modality sends those on purpose).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep, Verification  # type: ignore[attr-defined]

from integration.samples import write_ct_series
from tests.support.peers import REPO, ListenerProcess, storescu, wait_until
from tests.support.raw_dicom import study_states
from tests.support.records import db_rows

#: The idle timer: far longer than any test waits, so only MPPS can complete a study in time.
STABLE_SECONDS = 300.0

SUCCESS, INVALID_ATTRIBUTE_VALUE, PROCESSING_FAILURE = 0x0000, 0x0106, 0x0110
DUPLICATE_SOP_INSTANCE, NO_SUCH_OBJECT_INSTANCE, RESOURCE_LIMITATION = 0x0111, 0x0112, 0x0213


@pytest.fixture
def mpps_listener(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str
) -> ListenerProcess:
    return listener_factory(migrated_postgres_url, redis_url, stable_seconds=STABLE_SECONDS)


def associate(port: int, syntaxes: list[str] | None = None) -> Association:
    """pynetdicom as the modality: an association for MPPS (in ``syntaxes`` when given) and verification."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ModalityPerformedProcedureStep, syntaxes or DEFAULT_TRANSFER_SYNTAXES)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSVLM")
    assert assoc.is_established
    return assoc


@pytest.fixture
def modality(mpps_listener: ListenerProcess) -> Iterator[Association]:
    """An association of pynetdicom as the modality (Explicit VR Little Endian, our preference)."""
    assoc = associate(mpps_listener.port)
    yield assoc
    if assoc.is_established:
        assoc.release()


def ct_study(directory: Path, slices: int = 4) -> tuple[str, list[Path]]:
    study_uid = generate_uid()
    return study_uid, write_ct_series(directory, slices, rows=64, columns=64, study_uid=study_uid)


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def in_progress(study_uid: str) -> Dataset:
    """The N-CREATE data set of a modality starting a step (PS3.4 F.7.2.1: IN PROGRESS)."""
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.AccessionNumber = "ACC1"
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def ended(state: str, files: list[Path]) -> Dataset:
    """The final N-SET data set: the status and the instances the step made (Performed Series Sequence)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = state
    series = Dataset()
    series.SeriesInstanceUID = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    references = []
    for path in files:
        reference = Dataset()
        reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        reference.ReferencedSOPInstanceUID = sop_uid(path)
        references.append(reference)
    series.ReferencedImageSequence = references
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def create(assoc: Association, study_uid: str, uid: str | None = None) -> tuple[int, str]:
    uid = uid or generate_uid()
    answer, _ = assoc.send_n_create(in_progress(study_uid), ModalityPerformedProcedureStep, uid)
    return int(answer.Status), uid


def set_step(assoc: Association, uid: str, ds: Dataset) -> int:
    answer, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
    return int(answer.Status)


def state_of(listener: ListenerProcess, study_uid: str) -> tuple[str, int]:
    return study_states(listener.database_url).get(study_uid, ("", 0))


def jobs_of(listener: ListenerProcess, study_uid: str) -> list[tuple[object, ...]]:
    return db_rows(
        listener.database_url,
        "SELECT j.id, j.study_version FROM analysis_jobs j JOIN studies s ON s.id = j.study_id WHERE s.study_uid = :u",
        u=study_uid,
    )


def test_completed_with_every_instance_stored_completes_the_study_at_once(
    mpps_listener: ListenerProcess, modality: Association, tmp_path: Path
) -> None:
    study_uid, files = ct_study(tmp_path / "ct")
    code, uid = create(modality, study_uid)
    assert code == SUCCESS
    result = storescu(mpps_listener.port, files)
    assert result.returncode == 0, result.stderr[-500:]
    assert state_of(mpps_listener, study_uid)[0] == "receiving"

    started = time.monotonic()
    assert set_step(modality, uid, ended("COMPLETED", files)) == SUCCESS
    wait_until(lambda: jobs_of(mpps_listener, study_uid), timeout=30, message="analysis job")
    elapsed = time.monotonic() - started
    print(f"MPPS COMPLETED -> study stable with its job in {elapsed * 1000:.0f} ms (idle timer {STABLE_SECONDS:.0f} s)")
    assert elapsed < 10, elapsed  # the idle timer would take 300 s
    assert state_of(mpps_listener, study_uid)[0] in {"stable", "queued"}
    [(status, instances)] = db_rows(
        mpps_listener.database_url,
        "SELECT status, instance_uids FROM performed_steps WHERE sop_instance_uid = :u",
        u=uid,
    )
    assert status == "COMPLETED" and sorted(instances) == sorted(sop_uid(p) for p in files)
    actions = [a for (a,) in db_rows(mpps_listener.database_url, "SELECT action FROM audit_events ORDER BY id")]
    assert "mpps.created" in actions and "mpps.updated" in actions


def test_instances_arriving_after_completed_complete_the_study_with_the_last_one(
    mpps_listener: ListenerProcess, tmp_path: Path
) -> None:
    modality = associate(mpps_listener.port, [ImplicitVRLittleEndian])  # this modality speaks implicit VR only
    study_uid, files = ct_study(tmp_path / "ct", slices=3)
    code, uid = create(modality, study_uid)
    assert code == SUCCESS
    assert set_step(modality, uid, ended("COMPLETED", files)) == SUCCESS  # before any instance arrived
    assert modality.accepted_contexts[0].transfer_syntax == [ImplicitVRLittleEndian]
    modality.release()

    assert storescu(mpps_listener.port, files[:2]).returncode == 0
    time.sleep(1.5)  # several assembly passes: two of three listed instances are not enough
    assert state_of(mpps_listener, study_uid) == ("receiving", 1)
    assert not jobs_of(mpps_listener, study_uid)

    started = time.monotonic()
    assert storescu(mpps_listener.port, files[2:]).returncode == 0
    wait_until(lambda: jobs_of(mpps_listener, study_uid), timeout=30, message="analysis job")
    elapsed = time.monotonic() - started
    print(f"last listed instance -> study stable with its job in {elapsed * 1000:.0f} ms")
    assert elapsed < 10, elapsed
    assert [version for _, version in jobs_of(mpps_listener, study_uid)] == [1]


def test_discontinued_holds_the_study_past_its_timer_until_released(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    listener = listener_factory(migrated_postgres_url, redis_url, stable_seconds=1.0)  # a short idle timer
    study_uid, files = ct_study(tmp_path / "ct", slices=3)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="PACSVLM")
    assert assoc.is_established
    code, uid = create(assoc, study_uid)
    assert code == SUCCESS
    assert storescu(listener.port, files[:2]).returncode == 0
    assert set_step(assoc, uid, ended("DISCONTINUED", files[:2])) == SUCCESS
    assoc.release()
    assert state_of(listener, study_uid) == ("held", 1)

    assert storescu(listener.port, files[2:]).returncode == 0  # an instance after the hold: still held
    time.sleep(3)  # three times the idle timer
    assert state_of(listener, study_uid) == ("held", 1)
    assert not jobs_of(listener, study_uid)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    env.update(PACSVLM_DATABASE_URL=listener.database_url, PACSVLM_DATA_DIR=str(tmp_path / "cli"))
    command = [sys.executable, "-m", "worker.cli", "studies", "release", study_uid]
    released = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert released.returncode == 0, released.stderr[-2000:]
    wait_until(lambda: jobs_of(listener, study_uid), timeout=30, message="analysis job after release")
    assert [version for _, version in jobs_of(listener, study_uid)] == [1]
    assert ("study.released", study_uid) in db_rows(listener.database_url, "SELECT action, object_id FROM audit_events")
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "no held study" in again.stderr


def test_refusals_answer_the_right_status(
    mpps_listener: ListenerProcess, modality: Association, tmp_path: Path
) -> None:
    study_uid, files = ct_study(tmp_path / "ct", slices=1)
    assert set_step(modality, generate_uid(), ended("COMPLETED", files)) == NO_SUCH_OBJECT_INSTANCE

    code, uid = create(modality, study_uid)
    assert code == SUCCESS
    assert create(modality, study_uid, uid)[0] == DUPLICATE_SOP_INSTANCE
    unknown_status = Dataset()
    unknown_status.PerformedProcedureStepStatus = "FINISHED"
    assert set_step(modality, uid, unknown_status) == INVALID_ATTRIBUTE_VALUE

    assert set_step(modality, uid, ended("COMPLETED", files)) == SUCCESS
    # PS3.4 F.7.2.2: once COMPLETED, a step may no longer be updated
    assert set_step(modality, uid, ended("DISCONTINUED", files)) == PROCESSING_FAILURE
    assert set_step(modality, uid, ended("COMPLETED", files)) == PROCESSING_FAILURE
    [(status,)] = db_rows(
        mpps_listener.database_url, "SELECT status FROM performed_steps WHERE sop_instance_uid = :u", u=uid
    )
    assert status == "COMPLETED"

    completed_at_create = in_progress(study_uid)
    completed_at_create.PerformedProcedureStepStatus = "COMPLETED"
    answer, _ = modality.send_n_create(completed_at_create, ModalityPerformedProcedureStep, generate_uid())
    assert int(answer.Status) == INVALID_ATTRIBUTE_VALUE

    # an N-CREATE without a SOP Instance UID: we make one and answer it (PS3.7 10.3.5)
    responses: list[Dataset] = []
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    handlers = [(evt.EVT_DIMSE_RECV, lambda event: responses.append(event.message.command_set))]
    assoc = ae.associate("127.0.0.1", mpps_listener.port, ae_title="PACSVLM", evt_handlers=handlers)
    answer, _ = assoc.send_n_create(in_progress(study_uid), ModalityPerformedProcedureStep, None)
    assert int(answer.Status) == SUCCESS
    made = str(responses[0].AffectedSOPInstanceUID)
    assert set_step(assoc, made, ended("DISCONTINUED", files)) == SUCCESS
    assoc.release()
    assert [(r.CommandField, r.AffectedSOPClassUID, r.AffectedSOPInstanceUID) for r in responses] == [
        (0x8140, ModalityPerformedProcedureStep, made),
        (0x8120, ModalityPerformedProcedureStep, made),
    ]
    assert db_rows(mpps_listener.database_url, "SELECT 1 FROM performed_steps WHERE sop_instance_uid = :u", u=made)


def test_malformed_or_oversized_data_set_gets_a_failure_and_the_association_goes_on(
    mpps_listener: ListenerProcess, modality: Association, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pynetdicom.association

    study_uid, _ = ct_study(tmp_path / "ct", slices=1)
    broken = [
        b"\x40\x00\x52\x02CS\xff\x7fIN PROGRESS",  # a value longer than the data set
        b"garbage!" * 4,  # no element structure at all
        b"\x40\x00\x40\x03SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff",  # a sequence never closed
    ]
    for data in broken:
        monkeypatch.setattr(pynetdicom.association, "encode", lambda *args, data=data: data)
        answer, _ = modality.send_n_create(in_progress(study_uid), ModalityPerformedProcedureStep, generate_uid())
        assert int(answer.Status) == PROCESSING_FAILURE
    monkeypatch.undo()

    too_large = in_progress(study_uid)
    too_large.add_new(0x00091010, "OB", b"\0" * (1024 * 1024 + 2))  # a step is held in memory: at most 1 MiB
    answer, _ = modality.send_n_create(too_large, ModalityPerformedProcedureStep, generate_uid())
    assert int(answer.Status) == RESOURCE_LIMITATION

    assert modality.is_established
    assert int(modality.send_c_echo().Status) == SUCCESS
    code, _ = create(modality, study_uid)
    assert code == SUCCESS
    assert db_rows(mpps_listener.database_url, "SELECT count(*) FROM performed_steps") == [(1,)]


def test_step_facts_read_both_syntaxes_and_undefined_length_sequences() -> None:
    """The decoder on its own: what a step lists, in implicit and explicit VR, with delimited sequences."""
    import struct

    from integration.dicom.mpps_scp import InvalidStep, step_facts

    def element(group: int, number: int, value: bytes, vr: bytes | None) -> bytes:
        if vr is None:
            return struct.pack("<HHI", group, number, len(value)) + value
        return struct.pack("<HH2sH", group, number, vr, len(value)) + value

    def delimited(tag: tuple[int, int], item: bytes, vr: bytes | None) -> bytes:
        header = (
            struct.pack("<HHI", *tag, 0xFFFFFFFF) if vr is None else struct.pack("<HH2sHI", *tag, vr, 0, 0xFFFFFFFF)
        )
        start, end = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF), struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        return header + start + item + end + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)

    for syntax, vr in ((ImplicitVRLittleEndian, None), ("1.2.840.10008.1.2.1", True)):
        ui, cs, sq = (b"UI", b"CS", b"SQ") if vr else (None, None, None)
        reference = element(0x0008, 0x1155, b"1.2.3.4\0", ui)
        series = delimited((0x0008, 0x1140), reference, sq)
        data = (
            element(0x0040, 0x0252, b"COMPLETED ", cs)
            + delimited((0x0040, 0x0270), element(0x0020, 0x000D, b"1.2.3\0", ui), sq)
            + delimited((0x0040, 0x0340), series, sq)
        )
        facts = step_facts(data, syntax)
        assert (facts.status, facts.study_uid, facts.instance_uids) == ("COMPLETED", "1.2.3", ("1.2.3.4",)), syntax
        for cut in (4, 8, 12, 20):
            with pytest.raises(InvalidStep):
                step_facts(data[:-cut], syntax)


def test_a_study_whose_step_was_discontinued_before_its_instances_is_held_when_they_arrive(
    mpps_listener: ListenerProcess, modality: Association, tmp_path: Path
) -> None:
    study_uid, files = ct_study(tmp_path / "ct", slices=2)
    code, uid = create(modality, study_uid)
    assert code == SUCCESS
    assert set_step(modality, uid, ended("DISCONTINUED", files)) == SUCCESS
    assert storescu(mpps_listener.port, files).returncode == 0
    assert state_of(mpps_listener, study_uid) == ("held", 1)
    [(step_status,)] = db_rows(
        mpps_listener.database_url, "SELECT status FROM performed_steps WHERE sop_instance_uid = :u", u=uid
    )
    assert step_status == "DISCONTINUED"


def test_a_step_from_another_sites_modality_neither_completes_nor_holds_the_study(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    from integration.store.session import session_scope
    from integration.store.tables import Site

    with session_scope(migrated_postgres_url) as session:
        session.add_all([Site(code="NORTH", name="North"), Site(code="SOUTH", name="South")])
    calling_aes = {"STORESCU": {"site": "NORTH"}, "SOUTHCT": {"site": "SOUTH"}}
    listener = listener_factory(
        migrated_postgres_url, redis_url, stable_seconds=STABLE_SECONDS, calling_aes=calling_aes
    )
    study_uid, files = ct_study(tmp_path / "ct", slices=2)
    assert storescu(listener.port, files).returncode == 0  # a NORTH study

    ae = AE(ae_title="SOUTHCT")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="PACSVLM")
    assert assoc.is_established
    for final in ("COMPLETED", "DISCONTINUED"):
        code, uid = create(assoc, study_uid)
        assert code == SUCCESS
        assert set_step(assoc, uid, ended(final, files)) == SUCCESS  # recorded, but it does not act
    assoc.release()
    time.sleep(1.0)  # several assembly passes
    assert state_of(listener, study_uid) == ("receiving", 1)
    assert not jobs_of(listener, study_uid)
    details = db_rows(listener.database_url, "SELECT detail FROM audit_events WHERE action = 'mpps.updated'")
    assert [d["study"] for (d,) in details] == ["ignored", "ignored"]
