"""A large data set on its way in, kept in a temporary file of the store instead of in memory.

A C-STORE data set arrives as PDV fragments.  Holding them until the last one
(and joining them into one buffer) cost twice the instance's size per
association, so 16 associations of 2 GiB instances needed ~64 GiB.  Once a data
set passes :data:`SPOOL_THRESHOLD` the association writes what it holds into a
spool file that already starts with the instance's file meta, and keeps
appending there; the finished file is exactly the instance file, so storing it
is a flush and a link, and its header is read through a memory map (the strict
walk jumps over pixel data without touching those pages).  Per association the
listener then holds at most the threshold plus one PDU, whatever the instance
size.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from integration.intake.storage import InstanceStore, StorageError, StorageFull, StoredFile, write_all

log = logging.getLogger(__name__)

#: Bytes of one data set held in memory before it goes to a spool file.
SPOOL_THRESHOLD = 1024 * 1024


class DatasetSpool:
    """An instance file being written as its data set arrives.

    Parameters
    ----------
    store : InstanceStore
        The store whose temporary folder holds the spool (same file system: it is linked into place).
    prefix : bytes
        The file meta (preamble and group 2) that precedes the data set.

    Raises
    ------
    StorageFull, StorageError
        The store cannot take the file.

    Notes
    -----
    A write error does not raise: it is kept in :attr:`error`, the spool stops writing, and the
    C-STORE is answered with a failure once its last fragment has arrived.
    """

    def __init__(self, store: InstanceStore, prefix: bytes) -> None:
        self.store = store
        self.prefix_length = len(prefix)
        self.size = 0
        self.error: StorageError | StorageFull | None = None
        self._path: Path | None
        self._fd: int | None
        self._path, self._fd = store.temporary_file(len(prefix))
        self.append([prefix])

    def append(self, fragments: Sequence[bytes | memoryview]) -> None:
        """Write fragments at the end (blocking); a failure is kept in :attr:`error`."""
        if self._fd is None:
            return
        size = sum(len(fragment) for fragment in fragments)
        try:
            self.store.make_room(size)
            for fragment in fragments:
                write_all(self._fd, fragment)
        except StorageFull as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(StorageError(f"cannot write instance file: {exc.strerror or exc}"))
        else:
            self.size += size

    @contextmanager
    def dataset(self) -> Iterator[memoryview]:
        """Yield the data set (after the file meta), memory-mapped read-only."""
        if self._fd is None or self.error is not None:
            raise self.error or StorageError("spool already closed")
        mapped = mmap.mmap(self._fd, self.size, prot=mmap.PROT_READ)
        view = memoryview(mapped)[self.prefix_length :]
        try:
            yield view
        finally:
            try:
                view.release()
                mapped.close()
            except BufferError:
                pass  # a view is still referenced (an exception's traceback): unmapped when it is freed

    def commit(self, relative_path: str) -> StoredFile:
        """Flush the file and link it under ``relative_path``; an existing file there is kept.

        Parameters
        ----------
        relative_path : str
            The instance's store path.

        Returns
        -------
        StoredFile
            What was stored; the spool stays open (for an orphan's replacement) until :meth:`close`.

        Raises
        ------
        StorageError
            Writing or linking failed.
        """
        if self._fd is None or self._path is None or self.error is not None:
            raise self.error or StorageError("spool already closed")
        try:
            if self.store.fsync:
                os.fdatasync(self._fd)
            created = self.store.link_durably(self._path, relative_path)
        except OSError as exc:
            raise StorageError(f"cannot write instance file: {exc.strerror or exc}") from exc
        return StoredFile(relative_path, self.size, created)

    def close(self) -> None:
        """Remove the temporary file (a committed instance keeps its own link)."""
        fd, path, self._fd, self._path = self._fd, self._path, None, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        if path is not None:
            with suppress(OSError):
                path.unlink(missing_ok=True)

    def _fail(self, error: StorageError | StorageFull) -> None:
        log.error("spooling a data set failed: %s", error)
        self.error = error
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        if self._path is not None:
            with suppress(OSError):
                self._path.unlink(missing_ok=True)
            self._path = None
