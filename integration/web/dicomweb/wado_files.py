"""The files behind a WADO-RS answer: which objects a request names, and their bytes streamed as multipart.

A study of several hundred slices is a few hundred megabytes, so nothing here holds a study, or even a
file, in memory: the database is asked once for the objects (:func:`integration.store.catalog.objects_of`,
after :func:`~integration.web.security.access.study_for` has checked the site) and its session is closed
before the first byte is sent; :func:`multipart_body` is then a plain generator that Starlette runs in
worker threads, reading each file a megabyte at a time and sending pieces of a few megabytes (small files
packed together, so a series costs few thread hops and writes).  Paths come from the database and must stay
inside their root (the instance store or the data folder): relative, without ``..``; an object whose path
does not, or whose file has gone, is left out of the answer and logged by its SOP Instance UID.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom
from fastapi import HTTPException, status
from pydicom.uid import ExplicitVRLittleEndian

from integration.config import Settings
from integration.store.catalog import ObjectRoot, StoredObject, objects_of
from integration.store.session import session_scope
from integration.web.deps import CurrentUser
from integration.web.dicomweb.negotiation import EXPLICIT_VR_LITTLE_ENDIAN
from integration.web.security.access import study_for

log = logging.getLogger(__name__)

#: Bytes read from a file at once.
CHUNK_BYTES = 1024 * 1024
#: Size the parts are packed to before they are sent (the most a request holds in memory, about twice).
PACK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServedObject:
    """An object to answer with: its catalog entry and its file, checked to be inside its root."""

    item: StoredObject
    path: Path


@dataclass(frozen=True)
class Part:
    """One part of a multipart answer: its headers and a function giving its content in pieces."""

    content_type: str
    content: Callable[[], Iterable[bytes]]
    location: str | None = None


def objects_for(
    settings: Settings,
    user: CurrentUser,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[ServedObject]:
    """Return the objects a request names, with their files (blocking: one short database session).

    Parameters
    ----------
    settings : Settings
        Database, instance store and data folder.
    user : CurrentUser
        The reader.
    study_uid : str
        The study.
    series_uid, sop_instance_uid : str, optional
        Only this series, only this instance.

    Returns
    -------
    list of ServedObject
        In catalog order (series, instance number), never empty.

    Raises
    ------
    fastapi.HTTPException
        404 when the study does not exist or is another site's, or nothing of it matches.
    """
    with session_scope(settings.database_url) as session:
        study = study_for(session, user, study_uid)
        found = objects_of(session, study, series_uid=series_uid, sop_instance_uid=sop_instance_uid)
    roots = {ObjectRoot.INSTANCES: settings.instance_root.resolve(), ObjectRoot.DATA: settings.data_dir.resolve()}
    served = []
    for item in found:
        relative = PurePosixPath(item.path)  # checked by its words: resolving 300 paths took 35 ms
        path = roots[item.root] / relative
        if relative.is_absolute() or ".." in relative.parts or not path.is_file():
            log.warning("object %s is left out: its file is missing or outside its folder", item.sop_instance_uid)
            continue
        served.append(ServedObject(item, path))
    if not served:
        what = "instance" if sop_instance_uid else "series" if series_uid else "study"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")
    return served


def file_chunks(path: Path, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Read a file, or ``length`` bytes of it from ``offset``, :data:`CHUNK_BYTES` at a time."""
    left = length
    with path.open("rb", buffering=0) as stream:
        if offset:
            stream.seek(offset)
        while left is None or left > 0:
            block = stream.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not block:
                return
            if left is not None:
                left -= len(block)
            yield block


def new_boundary() -> str:
    """A random multipart boundary (it never occurs in DICOM data by more than chance: 2^-128)."""
    return f"pacsvlm-{secrets.token_hex(16)}"


def multipart_body(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """Write ``multipart/related`` parts, packed into pieces of about :data:`PACK_BYTES`.

    Blocking (files are read): Starlette runs each step of a plain generator in a worker thread, so packing
    several small files into one piece saves thread hops and socket writes (a 300-slice series goes out in
    about 40 pieces, not 900); a file larger than a piece is read :data:`CHUNK_BYTES` at a time.

    Parameters
    ----------
    parts : iterable of Part
        The parts; their content is produced only when its turn comes.
    boundary : str
        The boundary of the body's media type.

    Yields
    ------
    bytes
        The body, piece by piece.
    """
    pending = bytearray()
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        if part.location:
            head += f"Content-Location: {part.location}\r\n"
        pending += (head + "\r\n").encode("ascii")
        for block in part.content():
            pending += block
            if len(pending) >= PACK_BYTES:
                yield bytes(pending)
                pending.clear()
        pending += b"\r\n"
    pending += f"--{boundary}--\r\n".encode("ascii")
    yield bytes(pending)


def explicit_little_endian(path: Path) -> bytes:
    """Return a stored object re-encoded in Explicit VR Little Endian (compressed pixel data decoded).

    Parameters
    ----------
    path : pathlib.Path
        The stored file.

    Returns
    -------
    bytes
        The Part 10 file.

    Raises
    ------
    ValueError
        When it cannot be converted (a pixel data decoder is missing or the data is damaged); the message
        names the reason only.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # the same object, only re-encoded
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = io.BytesIO()
        ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except Exception as exc:  # pydicom and its decoders raise many types for damaged or unusual data
        raise ValueError(f"cannot be converted to Explicit VR Little Endian ({type(exc).__name__})") from exc
    return out.getvalue()


def dicom_part(served: ServedObject, wanted: str | None) -> Part:
    """The part of one object: the file as stored, or converted to Explicit VR Little Endian when asked."""
    stored = served.item.transfer_syntax_uid
    if wanted is None or wanted == stored:
        return Part(f"application/dicom; transfer-syntax={stored}", lambda: file_chunks(served.path))
    if wanted != EXPLICIT_VR_LITTLE_ENDIAN:  # the caller checked: a programming error
        raise ValueError(f"no conversion to {wanted}")

    def converted() -> Iterator[bytes]:
        try:
            yield explicit_little_endian(served.path)
        except ValueError:
            log.warning("object %s could not be converted in a multipart answer", served.item.sop_instance_uid)
            raise

    return Part(f"application/dicom; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}", converted)
