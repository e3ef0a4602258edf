"""The one interface to an archive that holds prior studies, whichever protocol it speaks.

A prior source is asked three things: the patient's studies, a study's series, and to hand over some of
those series.  :func:`open_archive` returns the client for the source's kind; everything else (which prior,
which series, where instances are stored) is decided by the callers against :class:`PriorArchive`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from integration.prior_sources import PriorSource
from integration.priors.matches import ArchiveError, InstanceSink, RetrieveResult, SeriesMatch, StudyMatch

if TYPE_CHECKING:
    from integration.config import Settings

__all__ = [
    "ArchiveError",
    "InstanceSink",
    "PriorArchive",
    "RetrieveResult",
    "SeriesMatch",
    "StudyMatch",
    "open_archive",
]


class PriorArchive(Protocol):
    """A client of one prior source (not thread-safe: one per thread).

    Every method raises :class:`ArchiveError` when the archive cannot be asked or does not answer.
    """

    name: str

    def find_studies(self, patient_id: str, issuer: str | None) -> list[StudyMatch]:
        """Return the patient's studies: Patient ID matched exactly, and the issuer when both have one."""
        ...

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        """Return a study's series, each with its first instance's SOP class and image type."""
        ...

    def retrieve(self, study_uid: str, series_uids: Sequence[str], sink: InstanceSink) -> RetrieveResult:
        """Fetch these series of the study: through ``sink`` (C-GET, WADO-RS) or to our listener (C-MOVE)."""
        ...

    def close(self) -> None:
        """Release what the client holds (an HTTP session)."""
        ...


def open_archive(source: PriorSource, settings: Settings) -> PriorArchive:
    """Return the client of a prior source.

    Parameters
    ----------
    source : PriorSource
        The configured source.
    settings : Settings
        Our AE title (the calling AE of queries, the destination of C-MOVE) and largest PDU.

    Returns
    -------
    PriorArchive
        A DIMSE or DICOMweb client; it connects only when asked.

    Raises
    ------
    ArchiveError
        The source's TLS files cannot be used.
    """
    if source.kind == "dimse":
        from integration.priors.dimse import DimseArchive

        return DimseArchive(source, calling_ae=settings.ae_title, max_pdu=settings.max_pdu_length)
    from integration.priors.dicomweb import DicomwebArchive

    return DicomwebArchive(source)
