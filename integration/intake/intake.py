"""The one way in: every received instance (C-STORE, STOW-RS part, photo upload) is stored here.

:meth:`InstanceIntake.store` owns the whole durability contract, so the listener and the web routes
cannot drift apart in it: the header is read and checked (:func:`~integration.intake.header.read_header`);
the file is written to a temporary file, flushed (``fdatasync``), hard-linked to its final name (the first
copy of a SOP instance wins) and its folder flushed -- in a writer thread, while the database writes the
rows (:func:`~integration.store.ingest.record_instance`: one study = one patient = one site, a series or an
instance never crosses studies); the rows are committed only once the file is durable, and on any failure
the file is removed again, so nothing is left half-written.  What happened is answered by name
(:class:`~integration.intake.outcome.Result`); each edge maps it to its protocol's answer.

A data set arrives either in memory (a small C-STORE, a STOW-RS part's view of its spool, a converted photo)
or in a :class:`~integration.intake.spool.DatasetSpool` that already is its instance file, written as the
data set arrived: then storing it is a flush and a link, and a 2 GiB instance costs no more than a buffer.

Two stores of one SOP instance never overlap: a lock per SOP Instance UID bucket, held across threads and
processes (the listener and each API process share the store), spans the file write and the commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from functools import lru_cache, partial

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.intake.header import InstanceHeader, SopClassMismatch, file_meta_bytes, read_header
from integration.intake.outcome import Origin, Result, StoreOutcome
from integration.intake.part10 import split_part10
from integration.intake.spool import DatasetSpool
from integration.intake.storage import InstanceLocks, InstanceStore, StorageError, StorageFull, StoredFile
from integration.intake.structure import InvalidInstance
from integration.intake.transfer import ACCEPTED_TRANSFER_SYNTAXES
from integration.store.ingest import Conflict, Receipt, audit_conflict, record_instance
from integration.store.session import run_with_reconnect
from integration.store.tables import Study, utcnow

log = logging.getLogger(__name__)

#: A data set as the intake takes it: encoded bytes in memory, or spooled to its instance file.
Dataset = bytes | memoryview | DatasetSpool


@lru_cache(maxsize=1)
def storage_sop_classes() -> frozenset[str]:
    """Return the SOP classes we store: every storage SOP class, as the listener accepts."""
    from pynetdicom import AllStoragePresentationContexts

    return frozenset(str(context.abstract_syntax) for context in AllStoragePresentationContexts)


class InstanceIntake:
    """Validate, store durably and record received instances, one at a time per SOP instance.

    Parameters
    ----------
    settings : Settings
        Database URL, instance size limit, and ``max_associations`` (the writer threads).
    store : InstanceStore
        Where instance files go; closed with the intake.
    on_new_study : callable, optional
        Called with the row id of each study an instance opened (sent to be drafted), after the commit: the
        prior fetcher starts its search at once.  It may also be set later (:attr:`on_new_study`); what it
        raises is logged, never the sender's failure.
    """

    def __init__(
        self, settings: Settings, store: InstanceStore, *, on_new_study: Callable[[int], None] | None = None
    ) -> None:
        self.on_new_study = on_new_study
        self.database_url = settings.database_url
        self.max_instance_bytes = settings.max_instance_bytes
        self.files = store
        self.locks = InstanceLocks(store.root / ".locks")
        # Files are made durable here while the calling thread waits on the database.
        self._writers = ThreadPoolExecutor(settings.max_associations, thread_name_prefix="instance-writer")

    def close(self) -> None:
        """Stop the writer threads; release the store's spare files and the lock files."""
        self._writers.shutdown(wait=True)
        self.files.close()
        self.locks.close()

    def open_spool(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, calling_ae: str
    ) -> DatasetSpool:
        """Start the instance file of a data set still arriving, its file meta from the envelope's UIDs.

        The data set must carry the same UIDs (checked when it is stored), so the meta is the stored file's.

        Raises
        ------
        StorageFull, StorageError
            The store cannot take the file.
        """
        meta = file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax_uid, calling_ae)
        return DatasetSpool(self.files, meta)

    def store_part10(
        self, data: bytes | memoryview, origin: Origin, *, expected_study_uid: str | None = None
    ) -> StoreOutcome:
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
        StoreOutcome
            What became of it.
        """
        try:
            part = split_part10(data)
        except InvalidInstance as exc:
            return StoreOutcome(Result.CANNOT_UNDERSTAND, reason=str(exc))
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
        dataset: Dataset,
        transfer_syntax_uid: str,
        origin: Origin,
        *,
        expected_study_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
    ) -> StoreOutcome:
        """Store one data set durably and record it; answer success only once both are committed.

        Parameters
        ----------
        dataset : bytes-like or DatasetSpool
            The encoded data set (no file meta), or its spool (from :meth:`open_spool`; closed here).
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
        StoreOutcome
            :attr:`~Result.STORED` or :attr:`~Result.DUPLICATE`, or the named reason nothing was stored.
        """
        try:
            return self._store(
                dataset,
                transfer_syntax_uid,
                origin,
                (expected_study_uid, expected_sop_class_uid, expected_sop_instance_uid),
            )
        except Exception:
            log.exception("%s failed unexpectedly", _sender(origin))
            return StoreOutcome(Result.PROCESSING_FAILURE, reason="processing failure")
        finally:
            if isinstance(dataset, DatasetSpool):
                dataset.close()

    def _store(
        self,
        dataset: Dataset,
        transfer_syntax_uid: str,
        origin: Origin,
        expected: tuple[str | None, str | None, str | None],
    ) -> StoreOutcome:
        expected_study_uid, expected_sop_class_uid, expected_sop_instance_uid = expected
        if transfer_syntax_uid not in ACCEPTED_TRANSFER_SYNTAXES:
            return StoreOutcome(Result.TRANSFER_SYNTAX_NOT_SUPPORTED, reason="transfer syntax not supported")
        encoded: AbstractContextManager[bytes | memoryview] = (
            dataset.dataset() if isinstance(dataset, DatasetSpool) else nullcontext(dataset)
        )
        try:
            with encoded as data:
                header = read_header(
                    data,
                    transfer_syntax_uid,
                    expected_sop_class_uid=expected_sop_class_uid,
                    expected_sop_instance_uid=expected_sop_instance_uid,
                    max_inflated_bytes=self.max_instance_bytes,
                    spill_dir=self.files.tmp_dir,
                )
        except SopClassMismatch as exc:
            return self._refused(Result.DOES_NOT_MATCH_REQUEST, origin, str(exc))
        except InvalidInstance as exc:
            return self._refused(Result.CANNOT_UNDERSTAND, origin, str(exc))
        except StorageError as exc:  # the spool failed or is gone
            log.error("%s refused: %s", _sender(origin), exc)
            return StoreOutcome(Result.OUT_OF_RESOURCES, reason="the file could not be written")
        if header.sop_class_uid not in storage_sop_classes():
            return self._refused(Result.SOP_CLASS_NOT_SUPPORTED, origin, "not a storage SOP class", header)
        if expected_study_uid is not None and header.study_uid != expected_study_uid:
            reason = "Study Instance UID differs from the request's"
            return self._refused(Result.NOT_THE_NAMED_STUDY, origin, reason, header)
        with self.locks.hold(header.sop_instance_uid):
            return self._store_locked(header, dataset, origin)

    def _store_locked(self, header: InstanceHeader, dataset: Dataset, origin: Origin) -> StoreOutcome:
        relative = self.files.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        write: Callable[[], StoredFile]
        rewrite: Callable[[], StoredFile]
        if isinstance(dataset, DatasetSpool):
            spool = dataset
            size = spool.size
            write = partial(spool.commit, relative)

            def rewrite() -> StoredFile:
                self.files.remove(relative)
                return spool.commit(relative)

        else:
            meta = file_meta_bytes(
                header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid, origin.calling_ae
            )
            size = len(meta) + len(dataset)
            try:  # any purge for room runs now, before this write's transaction (SQLite would make it wait)
                self.files.ensure_room(size)
            except StorageFull as exc:
                log.error("%s refused: %s", _sender(origin), exc)
                return StoreOutcome(Result.OUT_OF_RESOURCES, header, str(exc))
            write = partial(self.files.write, relative, (meta, dataset))
            rewrite = partial(self.files.replace, relative, (meta, dataset))
        # The file is made durable in a writer thread while the database writes the rows;
        # the rows are committed only once the file is safely on disk.
        writing = self._writers.submit(write)
        files: dict[str, StoredFile] = {}
        received = utcnow()

        def work(connection: Connection) -> Receipt:
            def file_is_durable(receipt: Receipt) -> bool:
                if not receipt.added:
                    return False
                _record_source(connection, receipt.study_id, origin, received)
                stored = writing.result()
                if not stored.created:  # an orphan of a crash: no row refers to it, ours replaces it
                    stored = rewrite()
                files["file"] = stored
                return True

            return record_instance(
                connection,
                header,
                storage_path=relative,
                size_bytes=size,
                calling_ae=origin.calling_ae,
                received_at=received,
                stable_seconds=origin.stable_seconds,
                site_id=origin.site_id,
                any_site=origin.any_site,
                role=origin.role,
                before_commit=file_is_durable,
            )

        try:
            receipt = run_with_reconnect(self.database_url, work)
        except StorageFull as exc:
            log.error("%s refused: %s", _sender(origin), exc)
            return StoreOutcome(Result.OUT_OF_RESOURCES, header, str(exc))
        except StorageError as exc:  # nothing was linked
            log.error("%s refused: %s", _sender(origin), exc)
            return StoreOutcome(Result.OUT_OF_RESOURCES, header, "the file could not be written")
        except SQLAlchemyError as exc:
            self._undo(writing, files)
            log.error("%s refused: database unavailable (%s)", _sender(origin), type(exc).__name__)
            return StoreOutcome(Result.OUT_OF_RESOURCES, header, "database unavailable")
        except BaseException:
            self._undo(writing, files)
            raise
        if receipt.conflict is not None:
            self._undo(writing, files)
            log.warning("%s refused: %s", _sender(origin), receipt.conflict.reason)
            audit_conflict(self.database_url, receipt, header, actor=f"ae:{origin.calling_ae}")
            return StoreOutcome(
                _CONFLICT_RESULTS.get(receipt.conflict, Result.CONFLICTS_WITH_STUDY), header, receipt.conflict.reason
            )
        if receipt.duplicate:
            self._undo(writing, files)  # a first copy under another study or series path is kept
            log.info("%s: duplicate SOP instance, first copy kept", _sender(origin))
            return StoreOutcome(Result.DUPLICATE, header)
        if receipt.new_study:
            self._opened(receipt.study_id)
        return StoreOutcome(Result.STORED, header)

    def _opened(self, study_id: int) -> None:
        """Tell the ``on_new_study`` callback of a study just opened (its failure is logged only)."""
        callback = self.on_new_study
        if callback is None:
            return
        try:
            callback(study_id)
        except Exception:
            log.exception("study %d: new-study callback failed", study_id)

    def _undo(self, writing: Future[StoredFile], files: dict[str, StoredFile]) -> None:
        """Remove the file of an instance whose rows were not committed (wait for the writer first)."""
        try:
            stored = files.get("file") or writing.result()
        except OSError:
            return  # nothing was linked
        if stored.created:  # ours (written or replacing an orphan); never a first copy we found in place
            self.files.remove(stored.relative_path)

    @staticmethod
    def _refused(result: Result, origin: Origin, reason: str, header: InstanceHeader | None = None) -> StoreOutcome:
        log.warning("%s refused: %s", _sender(origin), reason)
        return StoreOutcome(result, header, reason)


#: The result of each conflict that is not :attr:`Result.CONFLICTS_WITH_STUDY`.
_CONFLICT_RESULTS = {Conflict.SITE: Result.OTHER_SITE, Conflict.NOT_REQUESTED: Result.NOT_REQUESTED}

#: How log lines name an instance by how it came (the sender's AE title follows; no patient data).
_ARRIVALS = {"dicom": "C-STORE", "stow": "STOW-RS instance", "upload": "photo upload"}


def _sender(origin: Origin) -> str:
    """``C-STORE from 'CT1'``: what the log says of an instance's arrival."""
    return f"{_ARRIVALS.get(origin.source, 'instance')} from {origin.calling_ae!r}"


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
    """Return this process's intake for the settings' database and instance store (built on first use)."""
    root = settings.instance_root.resolve()
    key = (settings.database_url, str(root), settings.fsync, settings.min_free_bytes)
    with _intakes_lock:
        intake = _intakes.get(key)
        if intake is None:
            store = store_for(settings)
            intake = _intakes[key] = InstanceIntake(settings, store)
        return intake


def store_for(settings: Settings) -> InstanceStore:
    """Open the settings' instance store with its headroom and quota (each process opens it once)."""
    return InstanceStore(
        settings.instance_root,
        fsync=settings.fsync,
        min_free_bytes=settings.min_free_bytes,
        quota_bytes=settings.storage_quota_bytes,
        recount_seconds=settings.storage_usage_recount_seconds,
    )
