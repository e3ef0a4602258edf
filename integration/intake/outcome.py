"""What the intake is told about an instance (its origin) and what it answers (its outcome).

Both are protocol-free on purpose: the intake names what happened, and each edge maps that name to its
own answer (a DIMSE status in :mod:`integration.dicom.status`, an HTTP status in the web routes), so no
caller reads a bare status code and no two callers can drift in what a failure means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

from integration.intake.header import InstanceHeader

#: Pseudo calling AE title of instances received over STOW-RS (``studies.calling_ae``, file meta source AE).
STOW_AE: Final = "DICOMWEB"
#: Pseudo calling AE title of converted photo uploads.
UPLOAD_AE: Final = "WEBUPLOAD"


class Result(enum.StrEnum):
    """What became of one instance; the two first are successes, the others store nothing."""

    #: Stored now: the file is durable and its row committed.
    STORED = "stored"
    #: Stored before (same SOP Instance UID in the same study): the first copy is kept.
    DUPLICATE = "duplicate"
    #: Its transfer syntax is not one we read.
    TRANSFER_SYNTAX_NOT_SUPPORTED = "transfer syntax not supported"
    #: Not a storage SOP class.
    SOP_CLASS_NOT_SUPPORTED = "SOP class not supported"
    #: Its SOP Class or Instance UID differs from what its envelope (C-STORE request, file meta) says.
    DOES_NOT_MATCH_REQUEST = "does not match the request"
    #: Malformed, truncated, or missing or invalid UIDs.
    CANNOT_UNDERSTAND = "cannot understand"
    #: Of another study than the request named (STOW-RS ``/studies/{study}``).
    NOT_THE_NAMED_STUDY = "not the named study"
    #: Its series or SOP instance is another study's, or its patient differs from its study's.
    CONFLICTS_WITH_STUDY = "conflicts with its study"
    #: Its study belongs to another site than the sender's.
    OTHER_SITE = "study of another site"
    #: Sent as a prior (a C-MOVE arrival from a prior source), but its study is not a prior we asked for.
    NOT_REQUESTED = "not a requested prior"
    #: No room or no database now (storage headroom, a failed write, the database unreachable): try later.
    OUT_OF_RESOURCES = "out of resources"
    #: An unexpected error in our own code.
    PROCESSING_FAILURE = "processing failure"

    @property
    def succeeded(self) -> bool:
        """Whether the instance is stored (now or before)."""
        return self in (Result.STORED, Result.DUPLICATE)


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
        The site a study without one gets (the sender's).
    stable_seconds : float
        Idle time after which the study is complete (0: at the next assembly pass).
    any_site : bool
        The sender may add to a study of any site (administrators); otherwise a study of another
        site refuses the instance with :attr:`Result.OTHER_SITE`.
    role : {"current", "prior"}
        ``current``: sent to be drafted (a new study opens its prior search).  ``prior``: a retrieved prior,
        stored only into a study reserved as a prior (else :attr:`Result.NOT_REQUESTED`), never queued.
    """

    calling_ae: str
    source: str
    site_id: int | None
    stable_seconds: float
    any_site: bool = False
    role: Literal["current", "prior"] = "current"


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one instance.

    Attributes
    ----------
    result : Result
        What happened, by name.
    header : InstanceHeader or None
        The validated header, when it was read.
    reason : str
        Why it failed, naming attributes, never their values (empty on success).
    """

    result: Result
    header: InstanceHeader | None = None
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        """Whether the instance is stored (now or before)."""
        return self.result.succeeded

    @property
    def label(self) -> str:
        """``stored``, ``duplicate``, ``refused`` or ``error``: the counts an association or request reports."""
        if self.result.succeeded:
            return self.result.value
        return "error" if self.result is Result.PROCESSING_FAILURE else "refused"
