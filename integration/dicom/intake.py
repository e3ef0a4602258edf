"""Storing one received instance from its bytes: the step STOW-RS and photo uploads share with the listener.

:meth:`InstanceIntake.store` does what the listener's C-STORE handler does: validate the header
(:func:`~integration.dicom.header.read_header`), write the file durably (temporary file, fsync, atomic link;
the first copy of a SOP instance wins), record the rows (:func:`~integration.store.ingest.record_instance`) and
commit only once the file is safe; on any failure nothing is left half-written and a named DICOM status says
why.  On top of the listener it records where the study came from: its ``source`` (when this instance opened
the study), in the same transaction; the study's site is the first sender's for good, and an instance for a
study of another site is refused unless the sender may act for every site (``record_instance`` decides).

Two stores of one SOP instance never overlap: a lock per SOP Instance UID bucket, held across threads (a
``threading.Lock``) and processes (``flock`` on a file in the store's ``.locks`` folder), spans the file write
and the commit.  :func:`split_part10` takes a Part 10 file (a STOW-RS part, a converted photo) apart into
its transfer syntax and data set; the stored file gets our own file meta, as a C-STORE does.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Final

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.dicom import status
from integration.dicom.header import InstanceHeader, SopClassMismatch, file_meta_bytes, read_header
from integration.dicom.storage import InstanceLocks, InstanceStore, StorageError, StorageFull, StoredFile
from integration.dicom.structure import InvalidInstance
from integration.dicom.transfer import ACCEPTED_TRANSFER_SYNTAXES
from integration.store.ingest import Receipt, audit_conflict, record_instance
from integration.store.session import run_with_reconnect
from integration.store.tables import Study, utcnow

log = logging.getLogger(__name__)

#: Pseudo calling AE title of instances received over STOW-RS (``studies.calling_ae``, file meta source AE).
STOW_AE: Final = "DICOMWEB"
#: Pseudo calling AE title of converted photo uploads.
UPLOAD_AE: Final = "WEBUPLOAD"
TRANSFER_SYNTAX_NOT_SUPPORTED: Final = status.TRANSFER_SYNTAX_NOT_SUPPORTED
NOT_AUTHORIZED: Final = status.NOT_AUTHORIZED
#: Error: the instance is not of the study the request named (an A9xx "does not match" status).
STUDY_UID_MISMATCH: Final = status.DATASET_DOES_NOT_MATCH_SOP_CLASS

_LONG_META_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


@dataclass(frozen=True)
class Part10:
    """A Part 10 file taken apart.

    Attributes
    ----------
    transfer_syntax_uid : str
        From the file meta.
    sop_class_uid, sop_instance_uid : str or None
        Media Storage SOP Class/Instance UIDs of the file meta, when present.
    dataset : memoryview
        The data set after the file meta, as encoded.
    """

    transfer_syntax_uid: str
    sop_class_uid: str | None
    sop_instance_uid: str | None
    dataset: memoryview


def split_part10(data: bytes | memoryview) -> Part10:
    """Take a Part 10 file apart: 128-byte preamble, ``DICM``, file meta group (explicit VR little endian).

    Parameters
    ----------
    data : bytes-like
        The whole file.

    Returns
    -------
    Part10
        Its transfer syntax, file meta UIDs and data set (a view, not a copy).

    Raises
    ------
    InvalidInstance
        If it is not a Part 10 file or its file meta is malformed or has no transfer syntax.
    """
    view = memoryview(data).cast("B")
    if len(view) < 132 or bytes(view[128:132]) != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file (no 'DICM' prefix after the preamble)")
    pos, values = 132, {}
    while pos + 8 <= len(view):
        group, element = struct.unpack_from("<HH", view, pos)
        if group != 0x0002:
            break
        vr = bytes(view[pos + 4 : pos + 6])
        if not vr.isalpha() or not vr.isupper():
            raise InvalidInstance("the file meta group is not explicit VR little endian")
        if vr in _LONG_META_VRS:
            if pos + 12 > len(view):
                raise InvalidInstance("the file meta group is truncated")
            (length,), start = struct.unpack_from("<I", view, pos + 8), pos + 12
        else:
            (length,), start = struct.unpack_from("<H", view, pos + 6), pos + 8
        if start + length > len(view):
            raise InvalidInstance("the file meta group is truncated")
        values[element] = bytes(view[start : start + length]).decode("ascii", "replace").strip(" \x00") or None
        pos = start + length
    transfer_syntax = values.get(0x0010)
    if not transfer_syntax:
        raise InvalidInstance("the file meta has no Transfer Syntax UID")
    return Part10(transfer_syntax, values.get(0x0002), values.get(0x0003), view[pos:])


@lru_cache(maxsize=1)
def storage_sop_classes() -> frozenset[str]:
    """Return the SOP classes we store: every storage SOP class, as the listener accepts.

    Returns
    -------
    frozenset of str
        SOP Class UIDs.
    """
    from pynetdicom import AllStoragePresentationContexts

    return frozenset(str(context.abstract_syntax) for context in AllStoragePresentationContexts)


@dataclass(frozen=True)
class Origin:
    """Where instances come from and whom their study is for.

    Attributes
    ----------
    calling_ae : str
        The sender's (pseudo) AE title: ``studies.calling_ae`` and the file meta's source AE.
    source : str
        ``dicom``, ``stow`` or ``upload``; recorded on a study this instance opens.
    site_id : int or None
        The site a study without one gets (the uploader's).
    stable_seconds : float
        Idle time after which the study is complete (0: at the next assembly pass).
    any_site : bool
        The sender may add to a study of any site (administrators); otherwise a study of another
        site refuses the instance with :data:`NOT_AUTHORIZED`.
    """

    calling_ae: str
    source: str
    site_id: int | None
    stable_seconds: float
    any_site: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one instance.

    Attributes
    ----------
    status : int
        The DICOM status (0 on success, a named failure otherwise).
    label : str
        ``stored``, ``duplicate`` (success, first copy kept), ``refused`` or ``error``.
    header : InstanceHeader or None
        The validated header, when it was read.
    reason : str
        Why it failed, naming attributes, never their values (empty on success).
    """

    status: int
    label: str
    header: InstanceHeader | None = None
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        """Whether the instance is stored (now or before)."""
        return self.label in ("stored", "duplicate")


class InstanceIntake:
    """Validate, store durably and record received instances, one at a time per SOP instance.

    Parameters
    ----------
    settings : Settings
        Database URL.
    store : InstanceStore
        Where instance files go.
    """

    def __init__(self, settings: Settings, store: InstanceStore) -> None:
        self.database_url = settings.database_url
        self.max_instance_bytes = settings.max_instance_bytes
        self.files = store
        self.locks = InstanceLocks(store.root / ".locks")

    def close(self) -> None:
        """Release the store's spare files and the lock files."""
        self.files.close()
        self.locks.close()

    def store_part10(
        self, data: bytes | memoryview, origin: Origin, *, expected_study_uid: str | None = None
    ) -> Outcome:
        """Store a Part 10 file: its data set, in its transfer syntax, under our own file meta.

        Parameters
        ----------
        data : bytes-like
            The whole file (a STOW-RS part, a converted photo).
        origin : Origin
            Sender and site.
        expected_study_uid : str, optional
            The study the request named; an instance of another study is refused.

        Returns
        -------
        Outcome
            The status.
        """
        try:
            part = split_part10(data)
        except InvalidInstance as exc:
            return Outcome(status.CANNOT_UNDERSTAND, "refused", reason=str(exc))
        return self.store(
            part.dataset,
            part.transfer_syntax_uid,
            origin,
            expected_study_uid=expected_study_uid,
            expected_sop_class_uid=part.sop_class_uid,
            expected_sop_instance_uid=part.sop_instance_uid,
        )

    def store(
        self,
        dataset: bytes | memoryview,
        transfer_syntax_uid: str,
        origin: Origin,
        *,
        expected_study_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
    ) -> Outcome:
        """Store one data set durably and record it; answer success only once both are committed.

        Parameters
        ----------
        dataset : bytes-like
            The encoded data set (no file meta).
        transfer_syntax_uid : str
            Its transfer syntax.
        origin : Origin
            Sender and site.
        expected_study_uid : str, optional
            The study the request named.
        expected_sop_class_uid, expected_sop_instance_uid : str, optional
            What the envelope (file meta, C-STORE request) claims; the data set must agree.

        Returns
        -------
        Outcome
            ``stored`` or ``duplicate`` with status 0, or ``refused``/``error`` with a named failure status.
        """
        if transfer_syntax_uid not in ACCEPTED_TRANSFER_SYNTAXES:
            return Outcome(TRANSFER_SYNTAX_NOT_SUPPORTED, "refused", reason="transfer syntax not supported")
        try:
            header = read_header(
                dataset,
                transfer_syntax_uid,
                expected_sop_class_uid=expected_sop_class_uid,
                expected_sop_instance_uid=expected_sop_instance_uid,
                max_inflated_bytes=self.max_instance_bytes,
                spill_dir=self.files.tmp_dir,
            )
        except SopClassMismatch as exc:
            return Outcome(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "refused", reason=str(exc))
        except InvalidInstance as exc:
            return Outcome(status.CANNOT_UNDERSTAND, "refused", reason=str(exc))
        if header.sop_class_uid not in storage_sop_classes():
            return Outcome(status.SOP_CLASS_NOT_SUPPORTED, "refused", header, "not a storage SOP class")
        if expected_study_uid is not None and header.study_uid != expected_study_uid:
            return Outcome(STUDY_UID_MISMATCH, "refused", header, "Study Instance UID differs from the request's")
        try:
            with self.locks.hold(header.sop_instance_uid):
                return self._store_locked(header, dataset, origin)
        except Exception:
            log.exception("storing an instance from %r failed unexpectedly", origin.calling_ae)
            return Outcome(status.PROCESSING_FAILURE, "error", header, "processing failure")

    def _store_locked(self, header: InstanceHeader, dataset: bytes | memoryview, origin: Origin) -> Outcome:
        relative = self.files.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        meta = file_meta_bytes(
            header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid, origin.calling_ae
        )
        chunks = (meta, dataset)
        try:
            written = self.files.write(relative, chunks)
        except StorageFull:
            log.error("instance from %r refused: storage headroom exhausted", origin.calling_ae)
            return Outcome(status.OUT_OF_RESOURCES, "refused", header, "storage headroom exhausted")
        except StorageError as exc:
            log.error("instance from %r refused: %s", origin.calling_ae, exc)
            return Outcome(status.OUT_OF_RESOURCES, "refused", header, "the file could not be written")
        files = {"file": written}
        received = utcnow()

        def work(connection: Connection) -> Receipt:

            def before_commit(receipt: Receipt) -> bool:
                if not receipt.added:
                    return False
                _record_source(connection, receipt.study_id, origin, received)
                if not files["file"].created:  # an orphan of a crash: no row refers to it
                    files["file"] = self.files.replace(relative, chunks)
                return True

            return record_instance(
                connection,
                header,
                storage_path=relative,
                size_bytes=len(meta) + len(dataset),
                calling_ae=origin.calling_ae,
                received_at=received,
                stable_seconds=origin.stable_seconds,
                site_id=origin.site_id,
                any_site=origin.any_site,
                before_commit=before_commit,
            )

        try:
            receipt = run_with_reconnect(self.database_url, work)
        except (StorageFull, StorageError):
            log.error("instance from %r refused: replacing an orphaned file failed", origin.calling_ae)
            return Outcome(status.OUT_OF_RESOURCES, "refused", header, "the file could not be written")
        except SQLAlchemyError as exc:
            self._undo(files["file"])
            log.error("instance from %r refused: database unavailable (%s)", origin.calling_ae, type(exc).__name__)
            return Outcome(status.OUT_OF_RESOURCES, "refused", header, "database unavailable")
        except BaseException:
            self._undo(files["file"])
            raise
        if receipt.conflict is not None:
            self._undo(files["file"])
            log.warning("instance from %r refused: %s", origin.calling_ae, receipt.conflict.reason)
            audit_conflict(self.database_url, receipt, header, actor=f"ae:{origin.calling_ae}")
            return Outcome(status.for_conflict(receipt.conflict), "refused", header, receipt.conflict.reason)
        if receipt.duplicate:
            self._undo(files["file"])  # a first copy under another study or series path is kept
            return Outcome(status.SUCCESS, "duplicate", header)
        return Outcome(status.SUCCESS, "stored", header)

    def _undo(self, written: StoredFile) -> None:
        """Remove a file this call created whose rows were not committed (never a first copy found in place)."""
        if written.created:
            self.files.remove(written.relative_path)


def _record_source(connection: Connection, study_id: int, origin: Origin, received: datetime) -> None:
    """Record how the study arrived when this instance opened it (inside the recording transaction)."""
    if origin.source == "dicom":
        return  # the column's default already says so: no round trip
    first_received = connection.execute(select(Study.first_received_at).where(Study.id == study_id)).scalar_one()
    if first_received == received:
        connection.execute(update(Study).where(Study.id == study_id).values(source=origin.source))


_intakes: dict[tuple[str, str, bool, int], InstanceIntake] = {}
_intakes_lock = threading.Lock()


def intake_for(settings: Settings) -> InstanceIntake:
    """Return this process's intake for the settings' database and instance store (built on first use).

    Parameters
    ----------
    settings : Settings
        The settings.

    Returns
    -------
    InstanceIntake
        Shared by every request of the process.
    """
    root = settings.instance_root.resolve()
    key = (settings.database_url, str(root), settings.fsync, settings.min_free_bytes)
    with _intakes_lock:
        intake = _intakes.get(key)
        if intake is None:
            store = InstanceStore(root, fsync=settings.fsync, min_free_bytes=settings.min_free_bytes)
            intake = _intakes[key] = InstanceIntake(settings, store)
        return intake
