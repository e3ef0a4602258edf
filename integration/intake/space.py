"""Free space of the instance store: the file system's, or what is left of pacs-vlm's quota when smaller.

A hospital often gives pacs-vlm a share of a larger volume (``PACSVLM_STORAGE_QUOTA_BYTES``): the file system
still has room, but pacs-vlm must behave as if its share were a disk of its own, so the refusal of
C-STOREs, ``/health``, the purge loop and ``/metrics`` all read free space here.  With a quota, what the
store holds is counted cheaply: once from the files (a ``du``-like walk of the store folder), then kept up to
date in memory as writes are admitted and purges free bytes, and counted from the files again every
``storage_usage_recount_seconds`` in a background thread (which catches what other processes wrote or
removed).  An admitted write that then failed or was a duplicate is counted until the next recount: the
count errs on the full side, so the quota is never overrun by a miscount.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from integration.config import Settings

log = logging.getLogger(__name__)


def used_bytes(root: Path) -> int:
    """Return the bytes held by the files under ``root`` (their sizes; folders and missing files aside)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed while we walked
    return total


class StoreSpace:
    """Free space of one store folder, under an optional quota.

    Parameters
    ----------
    root : pathlib.Path
        The instance store's folder.
    quota_bytes : int, optional
        pacs-vlm's share of the file system; None: the whole file system.
    recount_seconds : float
        Age after which the usage is counted from the files again (in the background).
    """

    def __init__(self, root: Path, quota_bytes: int | None = None, recount_seconds: float = 300.0) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.recount_seconds = recount_seconds
        self._lock = threading.Lock()
        self._used: int | None = None
        self._counted_at = 0.0
        self._recounting = False
        #: Changes counted lately: a walk running meanwhile may have missed them.
        self._recent: list[tuple[float, int]] = []

    def free_bytes(self) -> int:
        """Return the free space: the file system's, or less when the quota leaves less."""
        free = shutil.disk_usage(self.root).free
        if self.quota_bytes is None:
            return free
        return max(0, min(free, self.quota_bytes - self.used()))

    def used(self) -> int:
        """Return what the store holds as counted (counting from the files first when never counted)."""
        with self._lock:
            used, stale = self._used, time.monotonic() - self._counted_at > self.recount_seconds
            start = used is not None and stale and not self._recounting
            if start:
                self._recounting = True
        if used is None:
            return self.recount()
        if start:
            threading.Thread(target=self._recount_quietly, name="store-usage", daemon=True).start()
        return used

    def recount(self) -> int:
        """Count the store's usage from its files now; return it."""
        began = time.monotonic()
        counted = used_bytes(self.root)
        with self._lock:
            self._used = counted + self._since(began)
            self._counted_at = began
            self._recounting = False
            return self._used

    def admitted(self, size: int) -> None:
        """Count ``size`` bytes a write was admitted for."""
        with self._lock:
            if self._used is not None:
                self._used += size
            self._note(size)

    def freed(self, size: int) -> None:
        """Count ``size`` bytes a purge removed."""
        with self._lock:
            if self._used is not None:
                self._used = max(0, self._used - size)
            self._note(-size)

    def _note(self, size: int) -> None:
        now = time.monotonic()
        self._recent.append((now, size))
        while self._recent and self._recent[0][0] < now - 600.0:
            self._recent.pop(0)

    def _since(self, began: float) -> int:
        # a write during the walk may or may not have been seen: count it again (the full side); frees not
        return sum(size for at, size in self._recent if at >= began and size > 0)

    def _recount_quietly(self) -> None:
        try:
            self.recount()
        except OSError as exc:
            log.warning("instance store usage not recounted: %s", exc.strerror or exc)
            with self._lock:
                self._recounting = False


_spaces: dict[tuple[str, int | None], StoreSpace] = {}
_spaces_lock = threading.Lock()


def space_for(root: Path, quota_bytes: int | None, recount_seconds: float = 300.0) -> StoreSpace:
    """Return this process's :class:`StoreSpace` of ``root`` (one per folder and quota, shared by every user)."""
    key = (str(root.resolve()), quota_bytes)
    with _spaces_lock:
        space = _spaces.get(key)
        if space is None:
            space = _spaces[key] = StoreSpace(root.resolve(), quota_bytes, recount_seconds)
        return space


def store_space(settings: Settings) -> StoreSpace:
    """Return this process's view of the instance store's free space (quota included)."""
    return space_for(settings.instance_root, settings.storage_quota_bytes, settings.storage_usage_recount_seconds)
