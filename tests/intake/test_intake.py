"""The one intake (integration/intake/intake.py) on a real PostgreSQL database and a real instance store.

Instances are pydicom's bundled test files (read from the wheel's folder; nothing is fetched).
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config

from integration.config import Settings
from integration.dicom import status
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import STOW_AE, Origin, Result
from integration.intake.part10 import split_part10
from integration.intake.storage import InstanceLocks, InstanceStore
from integration.intake.structure import InvalidInstance
from integration.samples import pydicom_test_file
from integration.store.jobs import complete_stable_studies
from integration.store.priors import reserve_prior_study
from integration.store.session import session_scope
from integration.store.tables import utcnow
from integration.store.users import create_site
from tests.support.records import db_rows

REPO = Path(__file__).resolve().parents[2]


def part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts)


@pytest.fixture
def intake(migrated_postgres_url: str, tmp_path: Path) -> Iterator[InstanceIntake]:
    settings = Settings(database_url=migrated_postgres_url, storage_dir=tmp_path / "store", min_free_bytes=0)
    made = InstanceIntake(settings, InstanceStore(settings.instance_root, fsync=True, min_free_bytes=0))
    yield made
    made.close()


def sites(url: str) -> tuple[int, int]:
    with session_scope(url) as session:
        return create_site(session, "NORTH", "North").id, create_site(session, "SOUTH", "South").id


def origin(site_id: int | None, *, any_site: bool = False, stable: float = 30.0) -> Origin:
    return Origin(calling_ae=STOW_AE, source="stow", site_id=site_id, stable_seconds=stable, any_site=any_site)


def test_split_part10_takes_meta_apart_and_refuses_what_is_not_part10() -> None:
    raw = pydicom_test_file("CT_small.dcm").read_bytes()
    part = split_part10(raw)
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    assert part.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert part.sop_class_uid == ds.SOPClassUID and part.sop_instance_uid == ds.SOPInstanceUID
    assert bytes(part.dataset) == raw[len(raw) - len(part.dataset) :] and bytes(part.dataset[:4]) == b"\x08\x00\x05\x00"
    for broken, message in (
        (b"", "Part 10"),
        (raw[:100], "Part 10"),
        (raw[:170], "truncated"),
        (pydicom_test_file("no_meta.dcm").read_bytes(), "Part 10"),
        (pydicom_test_file("meta_missing_tsyntax.dcm").read_bytes(), "Transfer Syntax"),
    ):
        with pytest.raises(InvalidInstance, match=message):
            split_part10(broken)


def test_store_records_source_site_and_keeps_the_first_copy(intake: InstanceIntake, migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    north, _ = sites(url)
    raw = pydicom_test_file("CT_small.dcm").read_bytes()
    first = intake.store_part10(raw, origin(north))
    assert (first.result, first.label) == (Result.STORED, "stored")
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    files = stored_files(intake.files.root)
    assert [f.relative_to(intake.files.root).as_posix() for f in files] == [
        f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    ]
    stored = files[0].read_bytes()
    assert stored.endswith(bytes(split_part10(raw).dataset))  # the data set byte for byte, under our file meta
    assert pydicom.dcmread(files[0]).file_meta.SourceApplicationEntityTitle == STOW_AE
    assert db_rows(url, "SELECT source, site_id, calling_ae, state FROM studies") == [
        ("stow", north, STOW_AE, "receiving")
    ]
    assert db_rows(url, "SELECT storage_path, size_bytes FROM instances") == [
        (files[0].relative_to(intake.files.root).as_posix(), len(stored))
    ]

    again = intake.store_part10(raw, origin(north))
    assert (again.result, again.label) == (Result.DUPLICATE, "duplicate")
    moved = ds.copy()
    moved.StudyInstanceUID = "1.2.3.4.5.6.7.8"  # same SOP instance under another study: refused, first copy kept
    elsewhere = intake.store_part10(part10(moved), origin(north))
    assert (elsewhere.result, elsewhere.label) == (Result.CONFLICTS_WITH_STUDY, "refused")
    assert elsewhere.reason == "the SOP Instance UID is stored in another study"
    assert stored_files(intake.files.root) == files and files[0].read_bytes() == stored
    assert db_rows(url, "SELECT count(*) FROM instances") == [(1,)]
    assert db_rows(url, "SELECT count(*) FROM studies") == [(1,)]


def test_an_instance_for_another_sites_study_is_refused_unless_sent_by_an_administrator(
    intake: InstanceIntake, migrated_postgres_url: str
) -> None:
    url = migrated_postgres_url
    north, south = sites(url)
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    assert intake.store_part10(part10(ds), origin(north)).label == "stored"
    second = ds.copy()
    second.SOPInstanceUID = "1.2.3.999.1"
    refused = intake.store_part10(part10(second), origin(south))
    assert (refused.result, refused.label) == (Result.OTHER_SITE, "refused")
    assert len(stored_files(intake.files.root)) == 1
    assert db_rows(url, "SELECT count(*) FROM instances") == [(1,)]
    by_admin = intake.store_part10(part10(second), origin(None, any_site=True))
    assert by_admin.label == "stored"
    assert db_rows(url, "SELECT site_id, source FROM studies") == [(north, "stow")]  # site and source kept


def test_refusals_have_their_own_statuses_and_leave_nothing(
    intake: InstanceIntake, migrated_postgres_url: str, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    raw = part10(ds)
    assert intake.store_part10(raw, origin(None), expected_study_uid="1.2.3").result is Result.NOT_THE_NAMED_STUDY
    lying = split_part10(raw)
    assert (
        intake.store(lying.dataset, lying.transfer_syntax_uid, origin(None), expected_sop_class_uid="1.2.3").result
        is Result.DOES_NOT_MATCH_REQUEST
    )
    assert intake.store(lying.dataset, "1.2.3.4", origin(None)).result is Result.TRANSFER_SYNTAX_NOT_SUPPORTED
    not_storage = ds.copy()
    not_storage.SOPClassUID = "1.2.840.10008.1.1"  # verification: no storage SOP class
    not_storage.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.1.1")
    assert intake.store_part10(part10(not_storage), origin(None)).result is Result.SOP_CLASS_NOT_SUPPORTED
    for name in ("badVR.dcm", "MR_truncated.dcm"):
        assert (
            intake.store_part10(pydicom_test_file(name).read_bytes(), origin(None)).result is Result.CANNOT_UNDERSTAND
        )
    with pydicom_config.disable_value_validation():
        escaping = ds.copy()
        escaping.StudyInstanceUID = "../../../../" + str(tmp_path / "escaped")
        assert intake.store_part10(part10(escaping), origin(None)).result is Result.CANNOT_UNDERSTAND
    assert not (tmp_path / "escaped").exists()
    assert stored_files(intake.files.root) == []
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(0,)]


def test_database_unreachable_refuses_with_out_of_resources_and_removes_the_file(tmp_path: Path) -> None:
    from tests.support.services import free_port

    settings = Settings(
        database_url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none", storage_dir=tmp_path / "store"
    )
    intake = InstanceIntake(settings, InstanceStore(settings.instance_root, min_free_bytes=0))
    try:
        outcome = intake.store_part10(pydicom_test_file("CT_small.dcm").read_bytes(), origin(None))
    finally:
        intake.close()
    assert (outcome.result, outcome.label) == (Result.OUT_OF_RESOURCES, "refused")
    assert stored_files(settings.instance_root) == []


def test_each_result_has_its_dicom_status() -> None:
    assert {result: status.for_result(result) for result in Result} == {
        Result.STORED: status.SUCCESS,
        Result.DUPLICATE: status.SUCCESS,
        Result.TRANSFER_SYNTAX_NOT_SUPPORTED: status.TRANSFER_SYNTAX_NOT_SUPPORTED,
        Result.SOP_CLASS_NOT_SUPPORTED: status.SOP_CLASS_NOT_SUPPORTED,
        Result.DOES_NOT_MATCH_REQUEST: status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        Result.CANNOT_UNDERSTAND: status.CANNOT_UNDERSTAND,
        Result.NOT_THE_NAMED_STUDY: status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        Result.CONFLICTS_WITH_STUDY: status.INSTANCE_OF_ANOTHER_STUDY,
        Result.OTHER_SITE: status.NOT_AUTHORIZED,
        Result.NOT_REQUESTED: status.NOT_AUTHORIZED,
        Result.OUT_OF_RESOURCES: status.OUT_OF_RESOURCES,
        Result.PROCESSING_FAILURE: status.PROCESSING_FAILURE,
    }
    assert [result for result in Result if result.succeeded] == [Result.STORED, Result.DUPLICATE]


def test_an_orphaned_file_of_a_crash_is_replaced(intake: InstanceIntake, migrated_postgres_url: str) -> None:
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    relative = intake.files.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    orphan = intake.files.root / relative
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crash before the commit")
    assert intake.store_part10(part10(ds), origin(None)).label == "stored"
    assert pydicom.dcmread(orphan).SOPInstanceUID == ds.SOPInstanceUID


def test_a_study_stored_with_no_idle_time_is_complete_at_the_next_pass(
    intake: InstanceIntake, migrated_postgres_url: str
) -> None:
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    photo_origin = Origin(calling_ae="WEBUPLOAD", source="upload", site_id=None, stable_seconds=0.0)
    assert intake.store_part10(part10(ds), photo_origin).label == "stored"
    with session_scope(migrated_postgres_url) as session:
        jobs = complete_stable_studies(session, utcnow(), "analysis")
    assert len(jobs) == 1
    assert db_rows(migrated_postgres_url, "SELECT state, source FROM studies") == [("stable", "upload")]


LOCK_HOLDER = """
import sys
from pathlib import Path
from integration.intake.storage import InstanceLocks
locks = InstanceLocks(Path(sys.argv[1]))
with locks.hold(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_instance_locks_exclude_other_processes(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path), "1.2.3"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        import fcntl
        import os
        import zlib

        bucket = zlib.crc32(b"1.2.3") % 64
        fd = os.open(tmp_path / f"{bucket:02d}.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    locks = InstanceLocks(tmp_path)
    with locks.hold("1.2.3"):  # free again once the other process let go
        pass
    locks.close()


def test_a_new_study_is_announced_and_a_prior_is_stored_only_into_its_reservation(
    intake: InstanceIntake, migrated_postgres_url: str
) -> None:
    url, opened = migrated_postgres_url, list[int]()
    intake.on_new_study = opened.append
    ct = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    assert intake.store_part10(part10(ct), origin(None)).result is Result.STORED
    ct.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    assert intake.store_part10(part10(ct), origin(None)).result is Result.STORED
    [(study_id, role)] = db_rows(url, "SELECT id, role FROM studies")
    assert opened == [study_id] and role == "current"  # announced once, after the commit

    mr = part10(pydicom.dcmread(pydicom_test_file("MR_small.dcm")))
    prior = Origin(calling_ae="PACS", source="dicom", site_id=None, stable_seconds=0, any_site=True, role="prior")
    refused = intake.store_part10(mr, prior)
    assert (refused.result, refused.label, refused.reason) == (Result.NOT_REQUESTED, "refused", "not a requested prior")
    assert len(stored_files(intake.files.root)) == 2
    with session_scope(url) as session:
        prior_id, _ = reserve_prior_study(
            session, str(pydicom.dcmread(io.BytesIO(mr)).StudyInstanceUID), None, "PACS", utcnow()
        )

    def broken(study_id: int) -> None:
        raise RuntimeError("the fetcher is gone")

    intake.on_new_study = broken
    assert intake.store_part10(mr, prior).result is Result.STORED
    assert opened == [study_id]  # a prior opens no study
    assert db_rows(url, "SELECT study_id FROM prior_searches") == [(study_id,)]
    ct.SOPInstanceUID, ct.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
    ct.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.4"
    assert intake.store_part10(part10(ct), origin(None)).result is Result.STORED  # the callback's failure is logged
    assert prior_id in {row[0] for row in db_rows(url, "SELECT id FROM studies WHERE role = 'prior'")}
