"""The durable instance store on a real file system."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from integration.intake.storage import InstanceStore, StorageError, StorageFull, StoredFile


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "instances", fsync=request.param)


@pytest.fixture
def plain_store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "instances")


def a_path(store: InstanceStore) -> str:
    return store.relative_path(generate_uid(), generate_uid(), generate_uid())


def leftovers(store: InstanceStore) -> list[Path]:
    """Temporary files with data in them (the empty spares the store keeps ready do not count)."""
    return sorted(path for path in store.tmp_dir.iterdir() if path.stat().st_size > 0)


def test_write_creates_the_file_with_exact_content(store: InstanceStore) -> None:
    relative = a_path(store)
    chunks = [b"\x00" * 128 + b"DICM", memoryview(b"meta-and-data" * 1000), bytearray(b"tail")]
    result = store.write(relative, chunks)
    expected = b"".join(bytes(chunk) for chunk in chunks)
    assert result == StoredFile(relative, len(expected), True)
    path = store.root / relative
    assert path.read_bytes() == expected
    assert store.path_of(relative) == path
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # not world-readable: patient data
    assert leftovers(store) == []


def test_a_large_write_is_exact(store: InstanceStore) -> None:
    relative = a_path(store)
    payload = os.urandom(3 * 1024 * 1024 + 7)
    assert store.write(relative, [payload[:1000], payload[1000:]]).size_bytes == len(payload)
    assert (store.root / relative).read_bytes() == payload


def test_the_first_copy_wins(store: InstanceStore) -> None:
    relative = a_path(store)
    assert store.write(relative, [b"first"]).created is True
    second = store.write(relative, [b"second copy"])
    assert second.created is False
    assert (store.root / relative).read_bytes() == b"first"
    assert leftovers(store) == []


def test_replace_overwrites(store: InstanceStore) -> None:
    relative = a_path(store)
    store.write(relative, [b"orphan of a crash"])
    result = store.replace(relative, [b"new"])
    assert result.created is True
    assert (store.root / relative).read_bytes() == b"new"
    assert leftovers(store) == []


def test_remove(store: InstanceStore) -> None:
    relative = a_path(store)
    store.write(relative, [b"x"])
    store.remove(relative)
    assert not (store.root / relative).exists()
    store.remove(relative)  # removing again is harmless


def test_relative_path_layout(plain_store: InstanceStore) -> None:
    assert plain_store.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5") == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "..",
        ".",
        "../../etc",
        "1.2/3",
        "1.2.3\x00",
        "/etc",
        "1.2.a",
        "1." + "2" * 63,
        pytest.param("1.2.3\n"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("position", [0, 1, 2])
def test_relative_path_refuses_invalid_uids(plain_store: InstanceStore, bad: str, position: int) -> None:
    uids = ["1.2.3", "1.2.3.4", "1.2.3.4.5"]
    uids[position] = bad
    with pytest.raises(ValueError, match="invalid UID"):
        plain_store.relative_path(*uids)


@pytest.mark.parametrize("escaping", ["../outside.dcm", "1.2/../../outside.dcm", "/etc/passwd", "../instances2/x.dcm"])
def test_path_of_refuses_escaping_paths(plain_store: InstanceStore, escaping: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        plain_store.path_of(escaping)


def test_path_of_refuses_a_symlink_out_of_the_root(plain_store: InstanceStore, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (plain_store.root / "1.2.3").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="escapes"):
        plain_store.path_of("1.2.3/1.2.3.4/1.2.3.4.5.dcm")


def test_storage_full_leaves_no_file(tmp_path: Path) -> None:
    root = tmp_path / "instances"
    free = shutil.disk_usage(tmp_path).free
    store = InstanceStore(root, min_free_bytes=free * 2 + 1)
    relative = a_path(store)
    with pytest.raises(StorageFull):
        store.write(relative, [b"x" * 1000])
    assert isinstance(StorageFull("x"), OSError)
    assert not (root / relative).exists()
    assert not (root / relative).parent.exists()
    assert leftovers(store) == []


def test_headroom_below_free_space_allows_writes(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances", min_free_bytes=1024)
    relative = a_path(store)
    assert store.write(relative, [b"x"]).created


def test_sweep_incoming_removes_part_files(store: InstanceStore) -> None:
    for index in range(3):
        (store.tmp_dir / f"crash{index}.part").write_bytes(b"half")
    (store.tmp_dir / "keep.txt").write_bytes(b"not ours")
    assert store.sweep_incoming() == 3
    assert [p.name for p in leftovers(store)] == ["keep.txt"]
    assert store.sweep_incoming() == 0


def test_a_failed_write_raises_storage_error_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "instances"
    store = InstanceStore(root)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    relative = store.relative_path(study, series, sop)
    if os.geteuid() == 0:
        # root ignores permissions: make the study folder a regular file, so creating the series folder fails
        (root / study).write_bytes(b"not a folder")
    else:
        root.chmod(0o500)
    try:
        with pytest.raises(StorageError):
            store.write(relative, [b"x" * 10_000])
    finally:
        root.chmod(0o700)
    assert not (root / relative).exists()
    assert leftovers(store) == []
    assert isinstance(StorageError("x"), OSError)


def test_a_missing_incoming_folder_is_a_storage_error(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances")
    store.tmp_dir.rmdir()
    relative = a_path(store)
    with pytest.raises(StorageError):
        store.write(relative, [b"x"])
    assert not (store.root / relative).exists()


def test_a_folder_removed_behind_the_cache_is_recreated(store: InstanceStore) -> None:
    study, series = generate_uid(), generate_uid()
    first = store.relative_path(study, series, generate_uid())
    store.write(first, [b"1"])
    shutil.rmtree(store.root / study)
    second = store.relative_path(study, series, generate_uid())
    assert store.write(second, [b"2"]).created
    assert (store.root / second).read_bytes() == b"2"


def test_spare_temporary_files_are_kept_ready_and_removed_on_close(store: InstanceStore) -> None:
    store.write(a_path(store), [b"first"])
    store._refiller.submit(lambda: None).result()  # the refill queued by the write has run
    spares = sorted(store.tmp_dir.glob("*.part"))
    assert len(spares) == store.SPARE_FILES and all(p.stat().st_size == 0 for p in spares)
    relative = a_path(store)
    assert store.write(relative, [b"second"]).created  # written through a spare
    assert (store.root / relative).read_bytes() == b"second"
    store.close()
    assert list(store.tmp_dir.iterdir()) == []


def test_many_folders_beyond_the_open_folder_cache(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances")
    store.OPEN_FOLDERS = 3
    written = [a_path(store) for _ in range(10)]
    for index, relative in enumerate(written):
        store.write(relative, [bytes([index])])
    assert len(store._dir_fds) == 3
    assert [(store.root / r).read_bytes() for r in written] == [bytes([i]) for i in range(10)]
    store.close()


def test_instance_locks_make_their_folder_again_when_it_was_removed(tmp_path: Path) -> None:
    from integration.intake.storage import InstanceLocks

    folder = tmp_path / ".locks"
    locks = InstanceLocks(folder)
    shutil.rmtree(folder)  # a store emptied by hand
    try:
        with locks.hold("1.2.3.4"):
            assert any(folder.glob("*.lock"))
    finally:
        locks.close()
