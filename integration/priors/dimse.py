"""A DIMSE PACS as a prior source: C-FIND (Study Root) to find, C-GET or C-MOVE (series level) to fetch.

Each operation is one association: the patient's studies are one C-FIND; a study's series are one
association with a series-level C-FIND and, per series, an image-level C-FIND cancelled after its first
answer (the SOP class and image type of one instance tell a localizer, a dose report or a scanned
document from an image series, and a 300-slice series costs one answer, not 300); a retrieval is one
association with a C-GET or C-MOVE per series.

**C-GET** needs nothing configured at the PACS: the instances come back on our association as C-STORE
sub-operations, each handed to the sink (the intake) whose outcome answers the sub-operation
(:func:`integration.dicom.status.for_result`).  For that we propose, in the SCP role, the storage SOP
classes a prior can be made of (:data:`RETRIEVE_SOP_CLASSES`): a request holds at most 128 presentation
contexts, one of them the C-GET's own, so not all ~150 storage classes fit.  The list covers the image
classes of every common modality (single- and multi-frame, enhanced and legacy-converted), secondary
captures, the SR classes (reports, dose reports, key objects, CAD) and encapsulated PDF/CDA; each is
proposed with every transfer syntax the intake reads.  A series of a class left out fails its
sub-operations, and the archive's failed count says so.

**C-MOVE** is what many PACSs allow instead: the PACS sends to our AE title (it must know our host and
port) and the instances arrive on our listener; the counts come from the final C-MOVE response.

Nothing here logs or raises patient data: only AE titles, UIDs of studies and series, and counts.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sop
from pynetdicom.association import Association
from pynetdicom.status import (
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
)

from integration.dicom.status import PROCESSING_FAILURE, for_result
from integration.dicom.tls import TlsConfigError, association_tls
from integration.intake.intake import storage_sop_classes
from integration.intake.outcome import Result
from integration.intake.transfer import ACCEPTED_TRANSFER_SYNTAXES
from integration.prior_sources import PriorSource
from integration.priors.matches import (
    ArchiveError,
    InstanceSink,
    RetrieveResult,
    SeriesMatch,
    StudyMatch,
    check_patient_id,
    element_number,
    element_text,
    note_problem,
    series_match,
    study_match,
)

log = logging.getLogger(__name__)

#: Study Root Query/Retrieve Information Model - FIND, GET and MOVE (PS3.4 C.6.2).
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"

_PENDING = frozenset({0xFF00, 0xFF01})
_CANCELLED = 0xFE00

_RETRIEVE_CLASS_NAMES = (
    *("CTImageStorage", "EnhancedCTImageStorage", "LegacyConvertedEnhancedCTImageStorage", "MRImageStorage"),
    *("EnhancedMRImageStorage", "EnhancedMRColorImageStorage", "LegacyConvertedEnhancedMRImageStorage"),
    *("ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation"),
    *("DigitalXRayImageStorageForProcessing", "DigitalMammographyXRayImageStorageForPresentation"),
    *("DigitalMammographyXRayImageStorageForProcessing", "BreastTomosynthesisImageStorage"),
    *("BreastProjectionXRayImageStorageForPresentation", "BreastProjectionXRayImageStorageForProcessing"),
    *("DigitalIntraOralXRayImageStorageForPresentation", "DigitalIntraOralXRayImageStorageForProcessing"),
    *("UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "EnhancedUSVolumeStorage"),
    *("NuclearMedicineImageStorage", "PositronEmissionTomographyImageStorage", "EnhancedPETImageStorage"),
    *("LegacyConvertedEnhancedPETImageStorage", "XRayAngiographicImageStorage", "EnhancedXAImageStorage"),
    *("XRayRadiofluoroscopicImageStorage", "EnhancedXRFImageStorage", "XRay3DAngiographicImageStorage"),
    *("XRay3DCraniofacialImageStorage", "SecondaryCaptureImageStorage"),
    *("MultiFrameSingleBitSecondaryCaptureImageStorage", "MultiFrameGrayscaleByteSecondaryCaptureImageStorage"),
    *("MultiFrameGrayscaleWordSecondaryCaptureImageStorage", "MultiFrameTrueColorSecondaryCaptureImageStorage"),
    *("VLPhotographicImageStorage", "VLEndoscopicImageStorage", "VLMicroscopicImageStorage", "BasicTextSRStorage"),
    *("EnhancedSRStorage", "ComprehensiveSRStorage", "Comprehensive3DSRStorage", "ExtensibleSRStorage"),
    *("XRayRadiationDoseSRStorage", "EnhancedXRayRadiationDoseSRStorage"),
    *("RadiopharmaceuticalRadiationDoseSRStorage", "PatientRadiationDoseSRStorage"),
    *("KeyObjectSelectionDocumentStorage", "MammographyCADSRStorage", "ChestCADSRStorage", "EncapsulatedPDFStorage"),
    *("EncapsulatedCDAStorage",),
)
#: Storage SOP classes proposed (SCP role) for C-GET: what a prior is made of, within pynetdicom's 128 contexts.
RETRIEVE_SOP_CLASSES: tuple[str, ...] = tuple(
    uid for uid in (str(getattr(sop, name)) for name in _RETRIEVE_CLASS_NAMES) if uid in storage_sop_classes()
)


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _status_name(code: int, table: dict[int, tuple[str, str]]) -> str:
    category, description = table.get(code, ("Status", "not named by the standard"))
    return f"0x{code:04X} ({category}: {description})"


@dataclass
class _Tally:
    """What came through one retrieval's C-STORE sub-operations."""

    sink: InstanceSink
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def on_store(self, event: Any) -> int:
        data = event.request.DataSet.getvalue()
        syntax = str(event.context.transfer_syntax)  # the accepted context: (id, abstract syntax, transfer syntax)
        self.bytes += len(data)
        self.received += 1
        try:
            outcome = self.sink(data, syntax)
        except Exception:
            log.exception("a retrieved instance could not be handed to the intake")
            self.failed += 1
            note_problem(self.problems, "processing failure")
            return PROCESSING_FAILURE
        if outcome.result is Result.STORED:
            self.stored += 1
        elif outcome.result is Result.DUPLICATE:
            self.duplicates += 1
        else:
            self.failed += 1
            note_problem(self.problems, f"an instance was refused: {outcome.reason or outcome.result.value}")
        return for_result(outcome.result)


class DimseArchive:
    """A :class:`~integration.priors.archive.PriorArchive` over DIMSE (one association per operation).

    Parameters
    ----------
    source : PriorSource
        A ``dimse`` source.
    calling_ae : str
        Our AE title: the calling AE of every association, and the C-MOVE destination.
    max_pdu : int
        The largest PDU we receive.

    Raises
    ------
    ArchiveError
        The source's TLS files cannot be used.
    """

    def __init__(self, source: PriorSource, *, calling_ae: str, max_pdu: int = 131_072) -> None:
        assert source.kind == "dimse" and source.host and source.port and source.ae_title
        self.name = source.name
        self.source = source
        self.calling_ae = calling_ae
        self.max_pdu = max_pdu
        self._peer = f"prior source {source.name} ({source.ae_title}@{source.host}:{source.port})"
        try:
            self._tls = association_tls(source)
        except TlsConfigError as exc:
            raise ArchiveError(f"TLS settings of prior source {source.name}: {exc}") from None

    def close(self) -> None:
        """Nothing is held between operations."""

    def find_studies(self, patient_id: str, issuer: str | None) -> list[StudyMatch]:
        """Return the patient's studies (one study-level C-FIND); see :class:`PriorArchive`.

        Raises
        ------
        ArchiveError
            The PACS cannot be asked or answered a failure, or the Patient ID cannot be asked for (an empty one
            would match every patient; one with a backslash would be two).
        """
        check_patient_id(patient_id)
        keys = {
            "PatientID": patient_id,
            "IssuerOfPatientID": issuer or "",
            "StudyInstanceUID": "",
            "StudyDate": "",
            "ModalitiesInStudy": "",
            "StudyDescription": "",
            "AccessionNumber": "",
        }
        with self._association("C-FIND", [FIND]) as assoc:
            answers = self._find(assoc, _identifier("STUDY", **keys))
        read = (study_match(ds, self.name, patient_id, issuer) for ds in answers)
        matches = [match for match in read if match is not None]
        log.info("prior source %s: %d studies found for a patient", self.name, len(matches))
        return matches

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        """Return a study's series with their first instance's SOP class and image type; see :class:`PriorArchive`.

        Raises
        ------
        ArchiveError
            The PACS cannot be asked or answered a failure.
        """
        keys = {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": "",
            "Modality": "",
            "SeriesNumber": "",
            "SeriesDescription": "",
            "BodyPartExamined": "",
            "NumberOfSeriesRelatedInstances": "",
        }
        found = []
        with self._association("C-FIND", [FIND]) as assoc:
            for ds in self._find(assoc, _identifier("SERIES", **keys)):
                series_uid = element_text(ds, "SeriesInstanceUID")
                if not series_uid:
                    continue
                image_keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
                image_keys |= {"SOPInstanceUID": "", "SOPClassUID": "", "ImageType": ""}
                # Instance 1 first: a PACS may go on answering a whole series' instances after our C-CANCEL.
                first = self._find(assoc, _identifier("IMAGE", **image_keys, InstanceNumber="1"), first_only=True)
                if not first:
                    first = self._find(assoc, _identifier("IMAGE", **image_keys, InstanceNumber=""), first_only=True)
                found.append(series_match(ds, first[0] if first else None))
        found.sort(key=SeriesMatch.order)
        return found

    def retrieve(self, study_uid: str, series_uids: Sequence[str], sink: InstanceSink) -> RetrieveResult:
        """Fetch the series by C-GET (through ``sink``) or C-MOVE (to our listener); see :class:`PriorArchive`.

        Raises
        ------
        ArchiveError
            The PACS cannot be asked, or a series failed with nothing of it arriving.
        """
        started = time.monotonic()
        tally = _Tally(sink)
        moving = self.source.retrieve == "move"
        if not series_uids:
            return RetrieveResult(0, 0, 0, 0, 0.0)
        if moving:
            opened = self._association("C-MOVE", [MOVE])
        else:
            handlers = [(evt.EVT_C_STORE, tally.on_store)]
            opened = self._association("C-GET", [GET, *RETRIEVE_SOP_CLASSES], roles=True, handlers=handlers)
        moved = [0, 0]  # completed (warnings included), failed: C-MOVE counts only
        with opened as assoc:
            for series_uid in series_uids:
                identifier = _identifier("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
                before, refused_before = tally.received, tally.failed
                if moving:
                    answers = assoc.send_c_move(identifier, self.calling_ae, MOVE, msg_id=1)
                else:
                    answers = assoc.send_c_get(identifier, GET, msg_id=1)
                final = self._final(answers, "C-MOVE" if moving else "C-GET")
                code = int(final.Status)
                completed = element_number(final, "NumberOfCompletedSuboperations") or 0
                warned = element_number(final, "NumberOfWarningSuboperations") or 0
                failed = element_number(final, "NumberOfFailedSuboperations") or 0
                if moving:
                    moved[0] += completed + warned
                    moved[1] += failed
                else:  # the PACS's failures include those we refused; the rest never reached us
                    tally.failed += max(0, failed - (tally.failed - refused_before))
                arrived = completed + warned if moving else tally.received - before
                table = QR_MOVE_SERVICE_CLASS_STATUS if moving else QR_GET_SERVICE_CLASS_STATUS
                if code not in (0x0000, 0xB000):
                    name = _status_name(code, table)
                    if arrived == 0:
                        raise ArchiveError(f"{self._peer}: {'C-MOVE' if moving else 'C-GET'} of a series failed {name}")
                    tally.problems.append(f"a series ended {name}")
                elif code == 0xB000:
                    tally.problems.append(f"a series ended {_status_name(code, table)} ({failed} failed)")
        seconds = time.monotonic() - started
        if moving:
            result = RetrieveResult(moved[0], 0, moved[1], 0, seconds, tuple(tally.problems))
        else:
            result = RetrieveResult(
                tally.stored, tally.duplicates, tally.failed, tally.bytes, seconds, tuple(tally.problems)
            )
        log.info(
            "prior source %s: %s of %d series of study %s: %d stored, %d duplicates, %d failed, %d bytes in %.1f s",
            self.name, "C-MOVE" if moving else "C-GET", len(series_uids), study_uid,
            result.stored, result.duplicates, result.failed, result.bytes, seconds,
        )  # fmt: skip
        return result

    def _find(self, assoc: Association, identifier: Dataset, *, first_only: bool = False) -> list[Dataset]:
        """Run one C-FIND on an open association; return the pending answers' identifiers."""
        found: list[Dataset] = []
        cancelled = False
        final: Dataset | None = None
        started = time.monotonic()
        for status, answer in assoc.send_c_find(identifier, FIND, msg_id=1):
            code = int(status.Status) if "Status" in status else None
            if code in _PENDING:
                started = time.monotonic()  # a timeout counts from the last answer
                if answer is not None and not cancelled:
                    found.append(answer)
                if first_only and not cancelled:
                    assoc.send_c_cancel(1, query_model=FIND)  # the rest is drained and dropped
                    cancelled = True
                continue
            final = status
        if final is None or "Status" not in final:
            raise ArchiveError(f"{self._peer}: {self._no_answer('C-FIND', started)}")
        code = int(final.Status)
        if code not in (0x0000, _CANCELLED):
            raise ArchiveError(f"{self._peer}: C-FIND failed {_status_name(code, QR_FIND_SERVICE_CLASS_STATUS)}")
        return found

    def _final(self, answers: Iterator[tuple[Dataset, Dataset | None]], operation: str) -> Dataset:
        """Drain a C-GET/C-MOVE's responses; return the final status (pending ones only count progress)."""
        final: Dataset | None = None
        started = time.monotonic()
        for status, _ in answers:
            if "Status" in status and int(status.Status) in _PENDING:
                started = time.monotonic()  # a timeout counts from the last answer
                continue
            final = status
        if final is None or "Status" not in final:
            raise ArchiveError(f"{self._peer}: {self._no_answer(operation, started)}")
        return final

    def _no_answer(self, operation: str, started: float) -> str:
        """Why a DIMSE operation ended without a final status: the PACS ended it, or its next answer timed out."""
        if time.monotonic() - started < 0.9 * self.source.timeout:
            return f"the PACS ended the {operation} (does it allow our AE title {self.calling_ae!r} to ask?)"
        return f"no {operation} answer within {self.source.timeout:g} s"

    @contextmanager
    def _association(
        self,
        operation: str,
        abstract_syntaxes: Sequence[str],
        *,
        roles: bool = False,
        handlers: Sequence[tuple[Any, Callable[[Any], Any]]] = (),
    ) -> Iterator[Association]:
        """Open one association for an operation; release it afterwards (abort it when the operation failed)."""
        ae = AE(ae_title=self.calling_ae)
        timeout = self.source.timeout
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        ae.maximum_pdu_size = self.max_pdu
        for uid in abstract_syntaxes:
            if uid in RETRIEVE_SOP_CLASSES:
                ae.add_requested_context(uid, ACCEPTED_TRANSFER_SYNTAXES)
            else:
                ae.add_requested_context(uid)
        extended = [build_role(uid, scp_role=True) for uid in RETRIEVE_SOP_CLASSES] if roles else None
        connected: list[bool] = []  # EVT_CONN_OPEN: the TCP connection was made (an abort is then the peer's)

        def opened(event: Any) -> None:
            connected.append(True)
            _no_delay(event)

        bound: list[Any] = [*handlers, (evt.EVT_CONN_OPEN, opened)]
        assert self.source.host is not None and self.source.port is not None
        assoc = ae.associate(
            self.source.host,
            self.source.port,
            ae_title=self.source.ae_title or "",
            max_pdu=self.max_pdu,
            ext_neg=extended,  # type: ignore[arg-type]  # a list of one of the accepted item kinds
            evt_handlers=bound,
            tls_args=self._tls,
        )
        if not assoc.is_established:
            why = _why_not(assoc, self.calling_ae, self._tls, bool(connected))
            raise ArchiveError(f"{self._peer}: {operation} association {why}")
        try:
            if not any(cx.abstract_syntax == abstract_syntaxes[0] for cx in assoc.accepted_contexts):
                raise ArchiveError(f"{self._peer}: the PACS does not offer Study Root {operation}")
            yield assoc
        except BaseException:
            if assoc.is_established:
                assoc.abort()
            raise
        if assoc.is_established:
            assoc.release()


def _no_delay(event: Any) -> None:
    """Send each PDU at once: without TCP_NODELAY a small C-FIND or C-GET message waits on Nagle and delayed ACKs."""
    sock = getattr(getattr(getattr(event.assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _why_not(assoc: Association, calling_ae: str, tls: object, connected: bool) -> str:
    if not connected:
        return "not established: no connection (is the PACS up and its host and port right?)"
    if assoc.is_rejected:
        return f"rejected (does the PACS know our AE title {calling_ae!r}?)"
    if assoc.is_aborted:
        return "aborted" + (" (over TLS: see the log for the handshake's reason)" if tls else "")
    return "not established (no answer to the association request)"
