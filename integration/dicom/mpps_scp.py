"""The MPPS SCP: N-CREATE and N-SET of Modality Performed Procedure Step on the listener.

A modality that reports its procedure steps lets a study be complete as soon as its step is COMPLETED and
every instance the step lists is stored, instead of after the idle timer; a DISCONTINUED step holds the study
for a person (:mod:`integration.store.mpps` decides).  The association (:mod:`integration.dicom.association`)
keeps the small data set in memory and calls :meth:`MppsSCP.handle` from a worker thread; here it is decoded
with pydicom in the accepted transfer syntax, checked, recorded in one transaction and answered with a
DIMSE-N status (PS3.4 F.7.2).  A malformed data set gets a failure status and the association goes on.
When a study became complete, the study assembler is woken so it completes it at once.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pydicom import Dataset
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from integration.config import Settings
from integration.dicom import dimse, status
from integration.dicom.storage_scp import SiteDirectory
from integration.store.mpps import StepFacts, StepOutcome, StepResult, StudyAction, record_created, record_set
from integration.store.session import session_scope
from integration.store.tables import utcnow

log = logging.getLogger(__name__)

#: Modality Performed Procedure Step SOP Class (PS3.4 F.7.3).
MPPS_SOP_CLASS: Final = "1.2.840.10008.3.1.2.3.3"
#: Largest N-CREATE / N-SET data set we take: it is held in memory (real ones are a few KiB; a step listing
#: thousands of instances stays far below).
MAX_STEP_DATASET_BYTES: Final = 1024 * 1024

_TAG: Final = struct.Struct("<HH")
_LENGTH: Final = struct.Struct("<I")
_SHORT_LENGTH: Final = struct.Struct("<H")
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_MAX_DEPTH: Final = 8

_STATUS_OF: Final = {
    StepOutcome.CREATED: status.SUCCESS,
    StepOutcome.UPDATED: status.SUCCESS,
    StepOutcome.DUPLICATE: status.DUPLICATE_SOP_INSTANCE,
    StepOutcome.NO_SUCH_STEP: status.NO_SUCH_OBJECT_INSTANCE,
    # PS3.4 F.7.2.2: "Performed Procedure Step Object may no longer be updated" is a processing failure.
    StepOutcome.FINAL: status.PROCESSING_FAILURE,
    StepOutcome.INVALID_STATUS: status.INVALID_ATTRIBUTE_VALUE,
}


class InvalidStep(ValueError):
    """A data set that cannot be a procedure step's: its text (names attributes, never values) and status."""

    def __init__(self, reason: str, code: int = status.INVALID_ATTRIBUTE_VALUE) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class StepRequest:
    """A complete N-CREATE-RQ or N-SET-RQ of the MPPS SOP class, with its data set held in memory.

    Attributes
    ----------
    command_field : int
        :data:`~integration.dicom.dimse.N_CREATE_RQ` or :data:`~integration.dicom.dimse.N_SET_RQ`.
    sop_class_uid, context_sop_class_uid : str
        The SOP class the request names, and its presentation context's abstract syntax.
    sop_instance_uid : str
        Affected (N-CREATE) or Requested (N-SET) SOP Instance UID; empty when an N-CREATE left it to us.
    dataset : bytes
        The data set as received, in ``transfer_syntax`` (empty when it was too large to keep).
    oversized_bytes : int
        The size of a data set past :data:`MAX_STEP_DATASET_BYTES` (it was read and dropped); 0 otherwise.
    """

    command_field: int
    sop_class_uid: str
    context_sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes | bytearray
    calling_ae: str
    oversized_bytes: int = 0


@dataclass(frozen=True)
class StepAnswer:
    """The DIMSE status of an MPPS request and the step's SOP Instance UID (made by us when the N-CREATE had none)."""

    status: int
    sop_instance_uid: str


class MppsSCP:
    """Decode, check and record MPPS requests; wake the study assembler when a study became complete.

    Parameters
    ----------
    settings : Settings
        The settings (database, calling AEs and their sites).
    on_complete : callable, optional
        Called (from a worker thread) after a step made a study complete, e.g. the assembler's ``wake``.
    """

    def __init__(self, settings: Settings, on_complete: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_complete = on_complete
        self._sites = SiteDirectory(settings)

    def handle(self, request: StepRequest) -> StepAnswer:
        """Record one N-CREATE or N-SET and return its answer (blocking; never raises for bad input).

        Parameters
        ----------
        request : StepRequest
            The request's UIDs, transfer syntax, data set and calling AE.

        Returns
        -------
        StepAnswer
            The status and the step's SOP Instance UID.
        """
        try:
            return self._handle(request)
        except Exception:  # a fault of ours: the modality gets a failure, the association goes on
            log.exception("MPPS request from %r failed", request.calling_ae)
            return StepAnswer(status.PROCESSING_FAILURE, request.sop_instance_uid)

    def _handle(self, request: StepRequest) -> StepAnswer:
        creating = request.command_field == dimse.N_CREATE_RQ
        what = "N-CREATE" if creating else "N-SET"
        if request.context_sop_class_uid != MPPS_SOP_CLASS or request.sop_class_uid != MPPS_SOP_CLASS:
            log.warning("MPPS %s from %r refused: not the MPPS SOP class of an MPPS context", what, request.calling_ae)
            return StepAnswer(status.SOP_CLASS_NOT_SUPPORTED, request.sop_instance_uid)
        if request.oversized_bytes:
            log.warning(
                "MPPS %s from %r refused: data set of %d bytes", what, request.calling_ae, request.oversized_bytes
            )
            return StepAnswer(status.RESOURCE_LIMITATION, request.sop_instance_uid)
        uid = request.sop_instance_uid or (generate_uid() if creating else "")
        if not _valid_uid(uid):
            log.warning("MPPS %s from %r refused: missing or malformed SOP Instance UID", what, request.calling_ae)
            return StepAnswer(status.INVALID_ATTRIBUTE_VALUE if uid else status.MISSING_ATTRIBUTE, uid)
        try:
            facts = step_facts(request.dataset, request.transfer_syntax)
        except InvalidStep as exc:
            log.warning("MPPS %s from %r refused: %s", what, request.calling_ae, exc)
            return StepAnswer(exc.code, uid)
        try:
            site_id = self._sites.site_id_for(request.calling_ae)
            with session_scope(self.settings.database_url) as session:
                if creating:
                    result = record_created(session, uid, facts, request.calling_ae, utcnow())
                else:
                    result = record_set(session, uid, facts, request.calling_ae, utcnow(), site_id=site_id)
        except IntegrityError:  # the same N-CREATE committed by another association meanwhile
            log.warning("MPPS %s from %r refused: duplicate", what, request.calling_ae)
            return StepAnswer(status.DUPLICATE_SOP_INSTANCE, uid)
        except SQLAlchemyError as exc:
            log.error("MPPS %s from %r failed: database unavailable (%s)", what, request.calling_ae, type(exc).__name__)
            return StepAnswer(status.PROCESSING_FAILURE, uid)
        code = _STATUS_OF[result.outcome]
        if code != status.SUCCESS:
            log.warning("MPPS %s from %r refused: %s", what, request.calling_ae, result.outcome.value)
        else:
            log.info("MPPS %s from %r: step %s%s", what, request.calling_ae, result.outcome.value, _study_note(result))
        if result.action is StudyAction.COMPLETE and self.on_complete is not None:
            try:
                self.on_complete()
            except Exception:
                log.exception("waking the study assembler failed")
        return StepAnswer(code, uid)


def step_facts(data: bytes | bytearray, transfer_syntax: str) -> StepFacts:
    """Decode an MPPS data set and take what the store needs of it.

    Parameters
    ----------
    data : bytes
        The data set (no preamble, no file meta).
    transfer_syntax : str
        The presentation context's transfer syntax: Implicit or Explicit VR Little Endian.

    Returns
    -------
    StepFacts
        Status, study, accession number and the listed SOP instances.

    Raises
    ------
    InvalidStep
        Undecodable data (``Failure: Processing Failure``), a status outside the defined terms or a malformed
        UID (``Failure: Invalid Attribute Value``).
    """
    if not data:
        raise InvalidStep("no data set", status.MISSING_ATTRIBUTE)
    if transfer_syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        raise InvalidStep("transfer syntax is not Implicit or Explicit VR Little Endian", status.PROCESSING_FAILURE)
    implicit = transfer_syntax == ImplicitVRLittleEndian
    try:
        # pydicom reads past truncated or garbled elements without a word: check the structure first
        _elements(memoryview(data), 0, len(data), implicit, delimited=False, depth=0)
    except (InvalidStep, struct.error):
        raise InvalidStep("malformed data set (truncated or garbled elements)", status.PROCESSING_FAILURE) from None
    try:
        dataset = read_dataset(
            io.BytesIO(bytes(data)),
            is_implicit_VR=implicit,
            is_little_endian=True,
        )
        return _facts(dataset)
    except InvalidStep:
        raise
    except Exception as exc:  # pydicom raises many kinds for malformed data, and lazily, on access
        raise InvalidStep(f"undecodable data set ({type(exc).__name__})", status.PROCESSING_FAILURE) from None


def _facts(dataset: Dataset) -> StepFacts:
    raw_status = dataset.get("PerformedProcedureStepStatus")
    step_status = str(raw_status).strip().upper() if raw_status not in (None, "") else None
    if step_status is not None and step_status not in {"IN PROGRESS", "COMPLETED", "DISCONTINUED"}:
        raise InvalidStep("Performed Procedure Step Status is not IN PROGRESS, COMPLETED or DISCONTINUED")
    study_uid = accession = None
    for item in dataset.get("ScheduledStepAttributesSequence") or ():
        candidate = str(item.get("StudyInstanceUID") or "").strip()
        if candidate:
            if not _valid_uid(candidate):
                raise InvalidStep("Study Instance UID of the Scheduled Step Attributes is malformed")
            study_uid = candidate
            accession = str(item.get("AccessionNumber") or "").strip()[:16] or None
            break
    instance_uids: tuple[str, ...] | None = None
    if "PerformedSeriesSequence" in dataset:
        found: list[str] = []
        for series in dataset.PerformedSeriesSequence or ():
            for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
                for reference in series.get(keyword) or ():
                    uid = str(reference.get("ReferencedSOPInstanceUID") or "").strip()
                    if not _valid_uid(uid):
                        raise InvalidStep("a Referenced SOP Instance UID of the Performed Series is malformed")
                    found.append(uid)
        instance_uids = tuple(dict.fromkeys(found))
    return StepFacts(step_status, study_uid, accession, instance_uids)


def _elements(data: memoryview, offset: int, end: int, implicit: bool, *, delimited: bool, depth: int) -> int:
    """Walk one data set's elements (to ``end``, or to its item delimiter); return the offset after it."""
    if depth > _MAX_DEPTH:
        raise InvalidStep("sequences nested too deep")
    previous = -1
    while offset < end:
        group, element = _TAG.unpack_from(data, offset)
        tag = group << 16 | element
        if group == 0xFFFE:
            (length,) = _LENGTH.unpack_from(data, offset + 4)
            if tag != _ITEM_END or not delimited or length:
                raise InvalidStep("item tag out of place")
            return offset + 8
        if tag <= previous:
            raise InvalidStep("elements out of order")
        previous = tag
        vr = b""
        if implicit:
            (length,) = _LENGTH.unpack_from(data, offset + 4)
            offset += 8
        else:
            vr = bytes(data[offset + 4 : offset + 6])
            if len(vr) != 2 or not vr.isalpha() or not vr.isupper():
                raise InvalidStep("not an explicit VR")
            if vr in _LONG_VRS:
                (length,) = _LENGTH.unpack_from(data, offset + 8)
                offset += 12
            else:
                (length,) = _SHORT_LENGTH.unpack_from(data, offset + 6)
                offset += 8
        sequence = vr == b"SQ" or (implicit and dictionary_has_tag(tag) and dictionary_VR(tag) == "SQ")
        if length == _UNDEFINED:
            if not (sequence or vr in (b"UN", b"")):
                raise InvalidStep("undefined length outside a sequence")
            offset = _items(data, offset, end, implicit or vr == b"UN", delimited=True, depth=depth)
            continue
        if offset + length > end:
            raise InvalidStep("element runs past its data set")
        if sequence:
            _items(data, offset, offset + length, implicit, delimited=False, depth=depth)
        offset += length
    if delimited:
        raise InvalidStep("item without its delimiter")
    return offset


def _items(data: memoryview, offset: int, end: int, implicit: bool, *, delimited: bool, depth: int) -> int:
    """Walk a sequence's items (to ``end``, or to its sequence delimiter); return the offset after it."""
    while offset < end:
        group, element = _TAG.unpack_from(data, offset)
        (length,) = _LENGTH.unpack_from(data, offset + 4)
        offset += 8
        tag = group << 16 | element
        if tag == _SEQUENCE_END and delimited and not length:
            return offset
        if tag != _ITEM:
            raise InvalidStep("not an item in a sequence")
        if length == _UNDEFINED:
            offset = _elements(data, offset, end, implicit, delimited=True, depth=depth + 1)
        elif offset + length > end:
            raise InvalidStep("item runs past its sequence")
        else:
            _elements(data, offset, offset + length, implicit, delimited=False, depth=depth + 1)
            offset += length
    if delimited:
        raise InvalidStep("sequence without its delimiter")
    return offset


def _valid_uid(uid: str) -> bool:
    return bool(uid) and len(uid) <= 64 and UID(uid).is_valid


def _study_note(result: StepResult) -> str:
    return f", study {result.action.value}" if result.action is not StudyAction.NONE else ""
