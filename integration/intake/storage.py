"""The durable instance store: one DICOM file per SOP instance.

A file is written to a temporary name on the same file system, flushed with
``fsync``, then hard-linked to its final name (which never replaces an
existing file, so the first copy of a SOP instance wins) and the directory is
flushed.  Paths are built only from UIDs that :mod:`integration.intake.header`
has validated (digits and dots), never from raw input.

Creating a file and opening a folder both wait for the file system's journal,
so the store keeps a few empty temporary files created ahead of need
(refilled in the background) and keeps the folders it flushes open.

Several processes (the listener, each API process) share ``.incoming``: each store's temporary files are
named after its owner token, and the store holds an exclusive ``flock`` on ``.owners/<token>`` while it
lives, so :meth:`InstanceStore.sweep_incoming` removes only the files of stores that are gone (a listener
start used to delete the API's spares, and the next STOW-RS instance failed with 0xA700).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from integration.intake.space import space_for
from integration.uids import is_valid_uid

log = logging.getLogger(__name__)

#: Longest a write waits for the disk pressure purge to free room before it is refused.
RELIEF_SECONDS = 10.0


class StorageFull(OSError):
    """The store's file system has less free space than the configured headroom."""


class StorageError(OSError):
    """An instance could not be written durably."""


@dataclass(frozen=True)
class StoredFile:
    """Where an instance landed.

    Attributes
    ----------
    relative_path : str
        Path under the store root, as recorded in the database.
    size_bytes : int
        Bytes written.
    created : bool
        False when a file for this SOP instance already existed (first copy kept).
    """

    relative_path: str
    size_bytes: int
    created: bool


class InstanceStore:
    """Durable files under one root folder.

    Parameters
    ----------
    root : pathlib.Path
        Folder of the store; created when missing.
    fsync : bool
        Flush files and directories to stable storage before returning.
    min_free_bytes : int
        Refuse writes when the file system has less free space than this.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        min_free_bytes: int = 0,
        quota_bytes: int | None = None,
        recount_seconds: float = 300.0,
    ) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.space = space_for(self.root, quota_bytes, recount_seconds)
        #: Called with the bytes a write needs when free space is short: purges one eligible study and
        #: tells whether it did (the listener's disk pressure purge); None: refuse at once.
        self.relieve: Callable[[int], bool] | None = None
        self.tmp_dir = self.root / ".incoming"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.owner, self._owner_fd = _claim_owner(self.root / ".owners")
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._spares: list[tuple[Path, int]] = []
        self._dir_fds: OrderedDict[Path, int] = OrderedDict()
        self._refiller = ThreadPoolExecutor(1, thread_name_prefix="spare-files")

    #: Empty temporary files kept ready, and folders kept open for flushing.
    SPARE_FILES = 2
    OPEN_FOLDERS = 64

    def close(self) -> None:
        """Remove the spare temporary files and close the folders kept open."""
        self._refiller.shutdown(wait=True)
        with self._lock:
            spares, self._spares = self._spares, []
            folders, self._dir_fds = list(self._dir_fds.values()), OrderedDict()
        for path, fd in spares:
            os.close(fd)
            path.unlink(missing_ok=True)
        for fd in folders:
            os.close(fd)
        if self._owner_fd is not None:
            (self.root / ".owners" / self.owner).unlink(missing_ok=True)
            os.close(self._owner_fd)
            self._owner_fd = None

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """Return the store path of an instance, from validated UIDs only.

        Parameters
        ----------
        study_uid, series_uid, sop_instance_uid : str
            The instance's UIDs.

        Returns
        -------
        str
            ``<study>/<series>/<sop>.dcm``.

        Raises
        ------
        ValueError
            If any UID is not a valid DICOM UID (so could not be a safe path).
        """
        for uid in (study_uid, series_uid, sop_instance_uid):
            if not is_valid_uid(uid):
                raise ValueError("refusing to build a path from an invalid UID")
        return f"{study_uid}/{series_uid}/{sop_instance_uid}.dcm"

    def path_of(self, relative_path: str) -> Path:
        """Return the absolute path of a stored file, refusing paths outside the root.

        Parameters
        ----------
        relative_path : str
            A path as recorded in the database.

        Returns
        -------
        pathlib.Path
            Absolute path under the store root.
        """
        path = (self.root / relative_path).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("stored path escapes the store root")
        return path

    def free_bytes(self) -> int:
        """Return the store's free space in bytes (the file system's, or less under a quota)."""
        return self.space.free_bytes()

    def make_room(self, size: int) -> None:
        """Admit a write of ``size`` bytes, purging eligible studies first when it would leave too little free.

        Raises
        ------
        StorageFull
            Still less free space than the headroom after purging what was eligible (for at most
            ``RELIEF_SECONDS``): the refusal, the last resort.
        """
        self.ensure_room(size)
        self.space.admitted(size)

    def ensure_room(self, size: int) -> None:
        """Purge eligible studies until a write of ``size`` bytes would leave the headroom (nothing admitted).

        For a caller that is about to open a database transaction: a purge needs the database too, and on SQLite
        it would wait for that transaction.

        Raises
        ------
        StorageFull
            As :meth:`make_room`.
        """
        if self.min_free_bytes:
            deadline = time.monotonic() + RELIEF_SECONDS
            while self.free_bytes() - size < self.min_free_bytes:
                relieve = self.relieve
                if relieve is None:
                    raise StorageFull("storage headroom exhausted")
                if time.monotonic() > deadline:
                    raise StorageFull("storage headroom exhausted, purging did not free enough in time")
                if not relieve(size):
                    raise StorageFull("storage headroom exhausted, no study eligible for purging")

    def write(self, relative_path: str, chunks: Sequence[bytes | memoryview]) -> StoredFile:
        """Write one instance durably; keep an existing file for the same path.

        Parameters
        ----------
        relative_path : str
            Target path from :meth:`relative_path`.
        chunks : sequence of bytes-like
            The file's content, written in order.

        Returns
        -------
        StoredFile
            What was written.

        Raises
        ------
        StorageFull
            Less free space than the configured headroom.
        StorageError
            Any file-system failure; nothing is left behind.
        """
        size = sum(len(chunk) for chunk in chunks)
        if (self.root / relative_path).exists():  # a re-sent instance: the first copy stays, no write or fsync
            return StoredFile(relative_path, size, created=False)
        tmp, fd = self.temporary_file(size)
        try:
            for chunk in chunks:
                write_all(fd, chunk)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write instance file: {exc.strerror or exc}") from exc
        return self.commit_temporary(relative_path, tmp, fd, size)

    def temporary_file(self, size: int) -> tuple[Path, int]:
        """Open a new temporary file in the store for ``size`` bytes; the caller writes it, then commits it.

        Parameters
        ----------
        size : int
            Bytes that will be written (checked against the free-space headroom).

        Returns
        -------
        tuple of (pathlib.Path, int)
            Its path and an open descriptor, for :meth:`commit_temporary` (which closes it).

        Raises
        ------
        StorageFull
            Less free space than the configured headroom.
        StorageError
            The file cannot be created.
        """
        self.make_room(size)
        try:
            return self._temporary_file()
        except OSError as exc:
            raise StorageError(f"cannot write instance file: {exc.strerror or exc}") from exc

    def commit_temporary(self, relative_path: str, tmp: Path, fd: int, size: int) -> StoredFile:
        """Make a written temporary file durable under ``relative_path``; an existing file there is kept.

        Parameters
        ----------
        relative_path : str
            Target path from :meth:`relative_path`.
        tmp : pathlib.Path
            The temporary file, from :meth:`temporary_file`; removed in every case.
        fd : int
            Its open descriptor; closed in every case.
        size : int
            Its size.

        Returns
        -------
        StoredFile
            What was stored (``created`` False when a first copy was already in place).

        Raises
        ------
        StorageError
            Any file-system failure; nothing is left behind.
        """
        final = self.root / relative_path
        try:
            try:
                if self.fsync and not final.exists():
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            created = self.link_durably(tmp, relative_path)
        except OSError as exc:
            raise StorageError(f"cannot write instance file: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return StoredFile(relative_path, size, created)

    def link_durably(self, tmp: Path, relative_path: str) -> bool:
        """Link a flushed temporary file under ``relative_path`` and flush its folder; False when one is there.

        Raises
        ------
        OSError
            The link or the flush failed.
        """
        final = self.root / relative_path
        created = self._link(tmp, final)
        if created and self.fsync:
            self._fsync_dir(final.parent)
        return created

    def _temporary_file(self) -> tuple[Path, int]:
        """Take a spare empty temporary file (or create one) and start refilling the spares."""
        with self._lock:
            spare = self._spares.pop() if self._spares else None
        with suppress(RuntimeError):  # closing: no more spares
            self._refiller.submit(self._refill)
        return spare if spare is not None else self._create_temporary()

    def _create_temporary(self) -> tuple[Path, int]:
        tmp = self.tmp_dir / f"{self.owner}-{uuid.uuid4().hex}.part"
        return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)

    def _refill(self) -> None:
        while True:
            with self._lock:
                if len(self._spares) >= self.SPARE_FILES:
                    return
            try:
                spare = self._create_temporary()
            except OSError:
                return  # the write path creates its own and reports the error
            with self._lock:
                self._spares.append(spare)

    def replace(self, relative_path: str, chunks: Sequence[bytes | memoryview]) -> StoredFile:
        """Overwrite a file that no database row refers to (an orphan of a crash).

        Parameters
        ----------
        relative_path : str
            Target path from :meth:`relative_path`.
        chunks : sequence of bytes-like
            The file's content.

        Returns
        -------
        StoredFile
            What was written.
        """
        self.remove(relative_path)
        return self.write(relative_path, chunks)

    def remove(self, relative_path: str) -> None:
        """Delete a stored file (used to undo a write whose database commit failed).

        Parameters
        ----------
        relative_path : str
            Path from :meth:`relative_path`.
        """
        path = self.path_of(relative_path)
        try:
            path.unlink(missing_ok=True)
            if self.fsync:
                self._fsync_dir(path.parent)
        except OSError:
            log.exception("could not remove an uncommitted instance file")

    def sweep_incoming(self) -> int:
        """Delete temporary files of stores that are gone (a crash); call before accepting associations.

        Files of live stores (another process's spares, this store's own) are kept.

        Returns
        -------
        int
            Number of files removed.
        """
        owners = self.root / ".owners"
        alive: dict[str, bool] = {self.owner: True}
        removed = 0
        for path in self.tmp_dir.glob("*.part"):
            owner = path.name.split("-", 1)[0] if "-" in path.name else ""
            if owner not in alive:
                alive[owner] = bool(owner) and _owner_alive(owners / owner)
            if not alive[owner]:
                path.unlink(missing_ok=True)
                removed += 1
        for lock in owners.glob("*") if owners.is_dir() else ():
            if not lock.name.startswith(".") and lock.name not in alive and not _owner_alive(lock):
                lock.unlink(missing_ok=True)
        return removed

    def _link(self, tmp: Path, final: Path) -> bool:
        """Hard-link ``tmp`` to ``final``; False when ``final`` exists (never replaced)."""
        self._ensure_dir(final.parent)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the folder went away since we cached it
            self._known_dirs.discard(final.parent)
            self._forget_dir(final.parent)
            self._ensure_dir(final.parent)
            os.link(tmp, final)
        return True

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        missing = [d for d in (directory.parent, directory) if not d.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for created in missing:
                self._fsync_dir(created.parent)
        if len(self._known_dirs) > 10_000:
            self._known_dirs.clear()
        self._known_dirs.add(directory)

    def _fsync_dir(self, directory: Path) -> None:
        with self._lock:
            kept = self._dir_fds.get(directory)
            if kept is not None:
                self._dir_fds.move_to_end(directory)
                kept = os.dup(kept)  # our own descriptor: eviction may close the kept one meanwhile
        fd = kept if kept is not None else os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            if kept is None:
                self._keep_dir(directory, fd)
            else:
                os.close(fd)

    def _keep_dir(self, directory: Path, fd: int) -> None:
        with self._lock:
            if directory in self._dir_fds:
                os.close(fd)
                return
            self._dir_fds[directory] = fd
            while len(self._dir_fds) > self.OPEN_FOLDERS:
                os.close(self._dir_fds.popitem(last=False)[1])

    def _forget_dir(self, directory: Path) -> None:
        with self._lock:
            fd = self._dir_fds.pop(directory, None)
        if fd is not None:
            os.close(fd)


def write_all(fd: int, chunk: bytes | memoryview) -> None:
    """Write all of ``chunk`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _claim_owner(folder: Path) -> tuple[str, int | None]:
    """Create ``folder/<token>`` under an exclusive ``flock`` held for the store's life; return both."""
    token = uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    draft = folder / f".{token}.new"  # locked before it gets the name a sweep looks at
    fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(draft, folder / token)
    except OSError:
        os.close(fd)
        draft.unlink(missing_ok=True)
        raise
    return token, fd


def _owner_alive(lock: Path) -> bool:
    """Tell whether the store owning ``lock`` still lives (holds its ``flock``)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class InstanceLocks:
    """Mutual exclusion per SOP Instance UID bucket, across threads and processes sharing a store.

    Parameters
    ----------
    folder : pathlib.Path
        Where the bucket lock files live (created when missing).
    buckets : int
        Number of buckets (UIDs hash into them with CRC-32, the same in every process).
    """

    def __init__(self, folder: Path, buckets: int = 64) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._threads = [threading.Lock() for _ in range(buckets)]
        self._fds: dict[int, int] = {}
        self._open_lock = threading.Lock()

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold the lock of ``key``'s bucket for the ``with`` block.

        Parameters
        ----------
        key : str
            The SOP Instance UID.

        Yields
        ------
        None
        """
        bucket = zlib.crc32(key.encode()) % len(self._threads)
        with self._threads[bucket]:
            fd = self._fd(bucket)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _fd(self, bucket: int) -> int:
        with self._open_lock:
            fd = self._fds.get(bucket)
            if fd is None:
                path = self.folder / f"{bucket:02d}.lock"
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
                except FileNotFoundError:  # the folder was removed (a store emptied by hand): make it again
                    self.folder.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
                self._fds[bucket] = fd
            return fd

    def close(self) -> None:
        """Close the lock files."""
        with self._open_lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)
