"""A streaming parser of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387), as STOW-RS sends them.

The parser is fed the body in chunks of any size and hands back events: a part begins (with its headers),
a piece of its content, the part ends.  It never holds more than one chunk plus a delimiter's length of
content, so a body of many hundred megabytes passes through in constant memory.  A preamble before the
first delimiter and an epilogue after the last are skipped, as the RFC says; anything else out of shape
(no closing delimiter, a header line without a colon, headers that never end) raises
:class:`MalformedMultipart` with a message that quotes nothing of the body.  :class:`PartSpool` keeps the
parts' content until the whole body has arrived (memory, then an unnamed temporary file).
"""

from __future__ import annotations

import contextlib
import mmap
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO

#: Spooled content kept in memory before it moves to a temporary file.
SPOOL_MEMORY_BYTES = 8 * 1024**2
#: How much the spool file grows between checks of the free space.
SPOOL_CHECK_BYTES = 64 * 1024**2
#: Longest header block of one part.
MAX_HEADER_BYTES = 16 * 1024
#: Longest boundary accepted: RFC 2046 allows 70 characters, but Orthanc's STOW-RS client sends 73 (two UUIDs).
MAX_BOUNDARY_LENGTH = 200
#: Characters RFC 2046 allows in a boundary (``bcharsnospace`` and the space, not last).
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]$")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class MalformedMultipart(ValueError):
    """The body is not a well-formed multipart body (the message says what is wrong, quoting nothing)."""


@dataclass(frozen=True)
class MediaType:
    """A parsed media type: ``type/subtype`` in lower case and its parameters (names in lower case)."""

    essence: str
    params: dict[str, str] = field(default_factory=dict)


def parse_media_type(value: str | None) -> MediaType | None:
    """Parse a ``Content-Type`` value.

    Parameters
    ----------
    value : str, optional
        The header value, e.g. ``multipart/related; type="application/dicom"; boundary=abc``.

    Returns
    -------
    MediaType or None
        The media type, or None when the value is missing or has no ``type/subtype``.
    """
    if not value:
        return None
    message = Message()
    message["content-type"] = value
    essence = value.split(";", 1)[0].strip().lower()
    if essence.count("/") != 1 or not all(essence.split("/")):
        return None
    params: dict[str, str] = {}
    for name, param in (message.get_params(header="content-type", unquote=True) or [])[1:]:
        params[name.lower()] = param if isinstance(param, str) else ""
    return MediaType(essence, params)


def valid_boundary(boundary: str) -> bool:
    """Tell whether a boundary is usable: RFC 2046's characters, not ending in a space, at most 200 long.

    Parameters
    ----------
    boundary : str
        The ``boundary`` parameter.

    Returns
    -------
    bool
        True when it may be used.
    """
    return len(boundary) <= MAX_BOUNDARY_LENGTH and _BOUNDARY.fullmatch(boundary) is not None


@dataclass(frozen=True)
class PartStart:
    """A part begins; ``headers`` maps lower-case header names to values (the last wins)."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    """A piece of the current part's content."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)


class MultipartRelatedParser:
    """Push parser: :meth:`feed` chunks, act on the events, then :meth:`close`.

    Parameters
    ----------
    boundary : str
        The ``boundary`` parameter of the body's media type (checked with :func:`valid_boundary`).

    Raises
    ------
    MalformedMultipart
        If the boundary is not valid.
    """

    def __init__(self, boundary: str) -> None:
        if not valid_boundary(boundary):
            raise MalformedMultipart("the boundary parameter is not a valid multipart boundary")
        self._dash_boundary = b"--" + boundary.encode("ascii")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = bytearray()
        self._state = _PREAMBLE
        self._at_start = True
        self.parts = 0

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse more of the body.

        Parameters
        ----------
        chunk : bytes
            The next bytes, of any length.

        Returns
        -------
        list of Event
            What the chunk completed, in order.

        Raises
        ------
        MalformedMultipart
            When the body is out of shape.
        """
        self._buffer += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """Check that the body ended with the closing delimiter.

        Raises
        ------
        MalformedMultipart
            When it did not (a truncated body, or no part at all).
        """
        if self._state != _EPILOGUE:
            if self.parts == 0 and self._state == _PREAMBLE:
                raise MalformedMultipart("no part found: the body does not contain the boundary")
            raise MalformedMultipart("the body ends before the closing boundary delimiter")

    def _step(self, events: list[Event]) -> bool:
        """Advance by one token; False when more input is needed."""
        state, buffer = self._state, self._buffer
        if state == _PREAMBLE:
            return self._skip_preamble()
        if state == _AFTER_DELIMITER:
            return self._after_delimiter()
        if state == _HEADERS:
            if len(buffer) < 2:
                return False
            if buffer.startswith(b"\r\n"):  # a part without headers
                events.append(PartStart({}))
                del buffer[:2]
                self._state = _BODY
                return True
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise MalformedMultipart("the headers of a part are too long or never end")
                return False
            events.append(PartStart(_parse_headers(bytes(buffer[:end]))))
            del buffer[: end + 4]
            self._state = _BODY
            return True
        if state == _BODY:
            end = buffer.find(self._delimiter)
            if end < 0:
                keep = len(self._delimiter) - 1  # a delimiter may straddle two chunks
                if len(buffer) > keep:
                    events.append(PartData(bytes(buffer[:-keep])))
                    del buffer[:-keep]
                return False
            if end:
                events.append(PartData(bytes(buffer[:end])))
            events.append(PartEnd())
            del buffer[: end + len(self._delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        buffer.clear()  # the epilogue is ignored
        return False

    def _skip_preamble(self) -> bool:
        buffer = self._buffer
        if self._at_start and len(buffer) >= len(self._dash_boundary):
            self._at_start = False
            if buffer.startswith(self._dash_boundary):  # no preamble: the body opens with the delimiter
                del buffer[: len(self._dash_boundary)]
                self._state = _AFTER_DELIMITER
                return True
        if self._at_start:
            return False
        end = buffer.find(self._delimiter)
        if end < 0:
            keep = len(self._delimiter) - 1
            if len(buffer) > keep:
                del buffer[:-keep]
            return False
        del buffer[: end + len(self._delimiter)]
        self._state = _AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        """After ``--boundary``: ``--`` closes the body; otherwise optional white space and CRLF open a part."""
        buffer = self._buffer
        if len(buffer) < 2:
            return False
        if buffer.startswith(b"--"):
            del buffer[:2]
            self._state = _EPILOGUE
            return True
        padding = len(buffer) - len(buffer.lstrip(b" \t"))
        if padding == len(buffer):
            if padding > 1024:
                raise MalformedMultipart("a boundary delimiter is followed by endless white space")
            return False
        if len(buffer) < padding + 2:
            return False
        if buffer[padding : padding + 2] != b"\r\n":
            raise MalformedMultipart("a boundary delimiter is not followed by a line break")
        del buffer[: padding + 2]
        self.parts += 1
        self._state = _HEADERS
        return True


class PartSpool:
    """Received parts' bytes, back to back: in memory up to a limit, then in an unnamed temporary file.

    The file (``O_TMPFILE``: it has no name, so a crash leaves nothing to sweep) lives in ``folder``;
    before it is created and then every :data:`SPOOL_CHECK_BYTES` of growth, ``room(more)`` is asked
    whether ``more`` bytes may still be written (it raises an :class:`OSError` when not).

    Parameters
    ----------
    folder : pathlib.Path
        Where the temporary file goes (the instance store's file system).
    room : callable, optional
        The free-space check.
    memory_limit : int
        Bytes kept in memory before moving to the file.
    """

    def __init__(
        self, folder: Path, *, room: Callable[[int], None] | None = None, memory_limit: int = SPOOL_MEMORY_BYTES
    ) -> None:
        self._folder = folder
        self._room = room or (lambda more: None)
        self._limit = memory_limit
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._checked_at = 0
        self.size = 0

    def append(self, data: bytes) -> None:
        """Add bytes at the end.

        Parameters
        ----------
        data : bytes
            The bytes.

        Raises
        ------
        OSError
            When the file cannot be written or the room check refuses.
        """
        if self._file is None and len(self._memory) + len(data) > self._limit:
            self._room(len(self._memory) + len(data))
            self._file = tempfile.TemporaryFile(dir=self._folder)  # noqa: SIM115 (closed by close())
            self._file.write(self._memory)
            self._memory = bytearray()
        if self._file is not None:
            if self.size + len(data) - self._checked_at > SPOOL_CHECK_BYTES:
                self._room(SPOOL_CHECK_BYTES)
                self._checked_at = self.size
            self._file.write(data)
        else:
            self._memory += data
        self.size += len(data)

    def truncate(self, size: int) -> None:
        """Drop everything after the first ``size`` bytes (an abandoned part).

        Parameters
        ----------
        size : int
            Bytes kept.
        """
        if self._file is not None:
            self._file.seek(size)
            self._file.truncate()
        else:
            del self._memory[size:]
        self.size = size

    @contextmanager
    def view(self) -> Iterator[memoryview]:
        """Yield all spooled bytes as one read-only view (the file memory-mapped, not read in).

        Yields
        ------
        memoryview
            Valid inside the ``with`` block only.
        """
        if self._file is None or self.size == 0:
            whole = memoryview(self._memory if self._file is None else b"")
            try:
                yield whole
            finally:
                whole.release()
            return
        self._file.flush()
        mapped = mmap.mmap(self._file.fileno(), self.size, access=mmap.ACCESS_READ)
        whole = memoryview(mapped)
        try:
            yield whole
        finally:
            whole.release()
            with contextlib.suppress(BufferError):  # a view still referenced (a traceback): unmapped with it
                mapped.close()

    def close(self) -> None:
        """Remove the temporary file and free the memory."""
        if self._file is not None:
            self._file.close()
        self._memory = bytearray()


def _parse_headers(block: bytes) -> dict[str, str]:
    """Parse a part's header block (lines ``Name: value``, folded lines joined)."""
    headers: dict[str, str] = {}
    name = b""
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and name:
            headers[name.decode("ascii").lower()] += " " + line.strip().decode("latin-1")
            continue
        key, colon, value = line.partition(b":")
        key = key.strip()
        if not colon or not _TOKEN.fullmatch(key):
            raise MalformedMultipart("a part has a malformed header line")
        name = key
        headers[key.decode("ascii").lower()] = value.strip().decode("latin-1")
    return headers
