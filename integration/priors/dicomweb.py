"""A DICOMweb archive as a prior source: QIDO-RS to find, WADO-RS (series by series) to fetch.

The HTTP is dicomweb-client's (a ``requests`` session: HTTP Basic through ``session.auth``, a Bearer
token as a header, the source's CA file as ``session.verify``, our client certificate as
``session.cert``); its own retries are off, since the prior fetcher keeps its own time budget.

A series is streamed: WADO-RS answers one ``multipart/related`` message, read part by part as it
arrives, and each part -- a Part 10 file in the transfer syntax the archive holds it in
(``transfer-syntax=*``: nothing is transcoded) -- is taken apart without a copy
(:func:`integration.intake.part10.split_part10`) and handed to the sink as its data set and transfer
syntax, so a 300-slice series is never held whole.  dicomweb-client's public ``iter_series`` would
parse every instance with pydicom, and the intake would need it encoded again; the raw parts come from
the client's own multipart reader instead (:func:`_series_parts`, the one place that uses its
internals, covered by the tests against Orthanc).

Errors never carry the request's URL (a QIDO query holds the Patient ID) or a credential: only the
source's name, the HTTP status or the kind of failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from integration.intake.outcome import Result
from integration.intake.part10 import split_part10
from integration.intake.structure import InvalidInstance
from integration.prior_sources import PriorSource
from integration.priors.matches import (
    ArchiveError,
    InstanceSink,
    RetrieveResult,
    SeriesMatch,
    StudyMatch,
    check_patient_id,
    element_text,
    note_problem,
    series_match,
    study_match,
)

log = logging.getLogger(__name__)

#: Every instance in the transfer syntax the archive holds it in (PS3.18 8.7.3.5.2: ``*`` = no transcoding).
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_STUDY_FIELDS = ("IssuerOfPatientID", "StudyDate", "ModalitiesInStudy", "StudyDescription", "AccessionNumber")
_SERIES_FIELDS = ("Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined", "NumberOfSeriesRelatedInstances")
_INSTANCE_FIELDS = ("SOPClassUID", "ImageType")


def _dataset(item: dict[str, Any]) -> Dataset:
    """A QIDO-RS answer (DICOM JSON) as a data set; bulk data is never fetched."""
    return Dataset.from_json(item)


class DicomwebArchive:
    """A :class:`~integration.priors.archive.PriorArchive` over DICOMweb.

    Parameters
    ----------
    source : PriorSource
        A ``dicomweb`` source.
    """

    def __init__(self, source: PriorSource) -> None:
        assert source.kind == "dicomweb" and source.url
        self.name = source.name
        self.source = source
        self._peer = f"prior source {source.name}"
        session = requests.Session()
        headers: dict[str, str] = {}
        if source.username is not None and source.password is not None:
            session.auth = requests.auth.HTTPBasicAuth(source.username, source.password.get_secret_value())
        if source.token is not None:
            headers["Authorization"] = f"Bearer {source.token.get_secret_value()}"
        if source.ca_file is not None:
            session.verify = str(source.ca_file)
        if source.certificate is not None and source.private_key is not None:
            session.cert = (str(source.certificate), str(source.private_key))
        self._session = session
        self._client = DICOMwebClient(
            url=source.url.rstrip("/"), session=session, headers=headers or None, timeout=source.timeout
        )
        self._client.set_http_retry_params(retry=False)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def find_studies(self, patient_id: str, issuer: str | None) -> list[StudyMatch]:
        """Return the patient's studies (QIDO-RS ``/studies``); see :class:`PriorArchive`.

        Raises
        ------
        ArchiveError
            The archive cannot be asked or answered an error, or the Patient ID cannot be asked for (an empty one
            would match every patient; one with a backslash would be two).
        """
        check_patient_id(patient_id)
        filters = {"PatientID": patient_id} | ({"IssuerOfPatientID": issuer} if issuer else {})
        with self._asking("QIDO-RS studies"):
            answers = self._client.search_for_studies(
                fields=list(_STUDY_FIELDS), search_filters=filters, get_remaining=True
            )
        read = (study_match(ds, self.name, patient_id, issuer) for ds in map(_dataset, answers))
        matches = [match for match in read if match is not None]
        log.info("prior source %s: %d studies found for a patient", self.name, len(matches))
        return matches

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        """Return a study's series, each with its first instance's SOP class and image type (QIDO-RS).

        Raises
        ------
        ArchiveError
            The archive cannot be asked or answered an error.
        """
        found = []
        with self._asking("QIDO-RS series"):
            answers = self._client.search_for_series(study_uid, fields=list(_SERIES_FIELDS), get_remaining=True)
            for ds in map(_dataset, answers):
                series_uid = element_text(ds, "SeriesInstanceUID")
                if not series_uid:
                    continue
                first = self._client.search_for_instances(
                    study_uid, series_uid, fields=list(_INSTANCE_FIELDS), limit=1
                )[:1]
                found.append(series_match(ds, _dataset(first[0]) if first else None))
        found.sort(key=SeriesMatch.order)
        return found

    def retrieve(self, study_uid: str, series_uids: Sequence[str], sink: InstanceSink) -> RetrieveResult:
        """Fetch the series with WADO-RS, each instance through ``sink`` as it arrives; see :class:`PriorArchive`.

        Raises
        ------
        ArchiveError
            The archive cannot be asked or answered an error before anything of a series arrived.
        """
        started = time.monotonic()
        stored = duplicates = failed = received = 0
        problems: list[str] = []
        for series_uid in series_uids:
            arrived = 0
            parts = _guarded(_series_parts(self._client, study_uid, series_uid), self._peer, "WADO-RS series")
            try:
                for part in parts:
                    received += len(part)
                    arrived += 1
                    try:
                        split = split_part10(part)
                    except InvalidInstance as exc:
                        failed += 1
                        note_problem(problems, f"a part is not a DICOM file: {exc}")
                        continue
                    outcome = sink(bytes(split.dataset), split.transfer_syntax_uid)
                    if outcome.result is Result.STORED:
                        stored += 1
                    elif outcome.result is Result.DUPLICATE:
                        duplicates += 1
                    else:
                        failed += 1
                        note_problem(problems, f"an instance was refused: {outcome.reason or outcome.result.value}")
            except ArchiveError as exc:
                if arrived == 0:
                    raise
                note_problem(problems, str(exc))
        seconds = time.monotonic() - started
        log.info(
            "prior source %s: WADO-RS of %d series of study %s: %d stored, %d duplicates, %d failed, %d bytes "
            "in %.1f s",
            self.name, len(series_uids), study_uid, stored, duplicates, failed, received, seconds,
        )  # fmt: skip
        return RetrieveResult(stored, duplicates, failed, received, seconds, tuple(problems))

    def _asking(self, what: str) -> AbstractContextManager[None]:
        return _asking(self._peer, what)


@contextmanager
def _asking(peer: str, what: str) -> Iterator[None]:
    """Turn what ``requests`` or dicomweb-client raise into an :class:`ArchiveError` without URL or secret."""
    try:
        yield
    except (requests.RequestException, ValueError) as exc:
        raise ArchiveError(f"{peer}: {what} {_failure(exc)}") from None


def _guarded(parts: Iterator[bytes], peer: str, what: str) -> Iterator[bytes]:
    """Yield the parts; what reading the next one raises becomes an :class:`ArchiveError` (the sink's does not)."""
    while True:
        with _asking(peer, what):
            part = next(parts, None)
        if part is None:
            return
        yield part


def _failure(exc: BaseException) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return f"refused our credentials (HTTP {code}): check the source's username/password or token"
        return f"answered HTTP {code}"
    if isinstance(exc, requests.exceptions.SSLError):
        return "failed: TLS handshake or certificate not trusted (check ca_file)"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "failed: no connection (is the archive up and its url right?)"
    if isinstance(exc, ValueError):
        return "answered something that is not DICOMweb"
    return f"failed ({type(exc).__name__})"


def _series_parts(client: DICOMwebClient, study_uid: str, series_uid: str) -> Iterator[bytes]:
    """Stream a series' Part 10 files as WADO-RS sends them (dicomweb-client's transport and multipart reader).

    ``iter_series`` would parse each part into a pydicom data set; this reads the same message but keeps the
    parts as they came, so the intake stores the archive's own encoding.
    """
    from dicomweb_client.web import _Transaction

    url = client._get_series_url(_Transaction.RETRIEVE, study_uid, series_uid)
    response = client._http_get(url, headers={"Accept": _ACCEPT_DICOM}, stream=True)
    kind = response.headers.get("Content-Type", "")
    if kind.startswith("application/dicom"):  # a single part sent bare (some servers; see dicomweb-client)
        yield response.content
        return
    yield from client._decode_multipart_message(response, stream=True)
