"""Replacing a whole file durably: temporary file in the same folder, flush, atomic rename, flushed folders.

Used for documents that are written whole and may be rewritten with the same content (report SR files,
documents delivered to a folder).  Received instances use :mod:`integration.intake.storage`, whose first
copy is never replaced.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, content: bytes | memoryview, *, fsync: bool = True) -> None:
    """Write ``content`` to ``path`` so that a reader sees the old file or the whole new one, never half.

    ``path`` is replaced atomically if present; missing folders are created. With ``fsync`` the file
    and the folders it made or changed are flushed to stable storage before returning.

    Raises
    ------
    OSError
        The file could not be written; no temporary file is left behind.
    """
    created = [p for p in (path.parent.parent, path.parent) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            if fsync:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if fsync:
        for folder in [path.parent, *(p.parent for p in created)]:
            descriptor = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
