"""Configured destinations of report documents, and the rules that say what goes where.

``PACSVLM_DESTINATIONS`` is a JSON list, for example::

    [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "10.0.0.10", "port": 4242,
      "reports": "both"},
     {"name": "pacs-tls", "kind": "dicom", "ae_title": "PACS", "host": "pacs.example.org", "port": 2762,
      "tls": true, "ca_file": "/etc/pacs-vlm/tls/pacs-ca.pem",
      "certificate": "/etc/pacs-vlm/tls/scu.pem", "private_key": "/etc/pacs-vlm/tls/scu.key"},
     {"name": "vna", "kind": "dicomweb", "url": "https://vna.example.org/dicom-web", "reports": "signed"},
     {"name": "ris", "kind": "http", "url": "https://ris.example.org/hl7", "documents": ["hl7"]},
     {"name": "ehr-drop", "kind": "folder", "folder": "/exports/fhir", "documents": ["fhir", "hl7"]}]

DICOM peers (C-STORE) and DICOMweb servers (STOW-RS) take the SR; a folder or an HTTP endpoint takes
FHIR and/or HL7 (a folder may also take the SR file).

A DICOM peer with ``"tls": true`` is reached over DICOM TLS (TLS 1.2+, BCP 195 ciphers): its
certificate must chain to ``ca_file`` (the system's CAs when omitted) and, unless
``verify_hostname`` is false, name ``host``; ``certificate`` and ``private_key`` give our client
certificate to peers that require one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Document = Literal["sr", "fhir", "hl7"]
Kind = Literal["dicom", "dicomweb", "folder", "http"]
ReportSelection = Literal["drafts", "signed", "both"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_DEFAULT_DOCUMENTS: dict[str, tuple[Document, ...]] = {
    "dicom": ("sr",),
    "dicomweb": ("sr",),
    "folder": ("fhir", "hl7"),
    "http": ("fhir",),
}
_ALLOWED_DOCUMENTS: dict[str, frozenset[str]] = {
    "dicom": frozenset({"sr"}),
    "dicomweb": frozenset({"sr"}),
    "folder": frozenset({"sr", "fhir", "hl7"}),
    "http": frozenset({"fhir", "hl7"}),
}


class Destination(BaseModel):
    """One place report documents are delivered to.

    Attributes
    ----------
    name : str
        Unique name (letters, digits, ``_.-``), stored with each delivery.
    kind : str
        ``dicom`` (C-STORE SCU), ``dicomweb`` (STOW-RS), ``folder`` or ``http`` (POST).
    reports : str
        Which report versions go there: ``drafts``, ``signed`` or ``both``.
    documents : tuple of str
        What is sent: ``sr``, ``fhir``, ``hl7`` (defaults by kind).
    ae_title, host, port
        The DICOM peer (kind ``dicom``).
    url : str
        Base URL of the DICOMweb service (``.../dicom-web``) or the HTTP endpoint.
    folder : pathlib.Path
        Target folder (kind ``folder``).
    timeout : float
        Seconds per attempt.
    tls : bool
        Kind ``dicom``: associate over TLS.
    ca_file : pathlib.Path, optional
        PEM CA certificates the peer's certificate must chain to (the system's CAs when omitted).
    certificate, private_key : pathlib.Path, optional
        Our PEM client certificate and unencrypted key (both or neither), for peers that require one.
    verify_hostname : bool
        Check that the peer's certificate names ``host`` (a DNS name or IP address in subjectAltName).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Kind
    reports: ReportSelection = "signed"
    documents: tuple[Document, ...] = ()
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = None
    folder: Path | None = None
    receiving_application: str = "RIS"
    timeout: float = Field(default=30.0, gt=0, le=600)
    tls: bool = False
    ca_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    verify_hostname: bool = True

    @field_validator("name")
    @classmethod
    def _name_valid(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("a destination name is 1-64 letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _complete_for_kind(self) -> Destination:
        if not self.documents:
            object.__setattr__(self, "documents", _DEFAULT_DOCUMENTS[self.kind])
        wrong = set(self.documents) - _ALLOWED_DOCUMENTS[self.kind]
        if wrong:
            raise ValueError(f"a {self.kind} destination cannot take {', '.join(sorted(wrong))}")
        if self.kind == "dicom":
            if not (self.ae_title and self.host and self.port):
                raise ValueError("a dicom destination needs ae_title, host and port")
            if not _AE_TITLE.fullmatch(self.ae_title) or not self.ae_title.strip():
                raise ValueError("ae_title must be 1-16 printable characters without backslash")
        tls_files = (self.ca_file, self.certificate, self.private_key)
        if any(f is not None for f in tls_files) and not (self.kind == "dicom" and self.tls):
            raise ValueError("ca_file, certificate and private_key are for dicom destinations with tls true")
        if self.tls and self.kind != "dicom":
            raise ValueError("tls is for dicom destinations (use an https url for the others)")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private key (give both or neither)")
        if self.kind in ("dicomweb", "http") and not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError(f"a {self.kind} destination needs an http(s) url")
        if self.kind == "folder" and self.folder is None:
            raise ValueError("a folder destination needs folder")
        return self

    def takes(self, status: Literal["draft", "signed"]) -> bool:
        """Whether report versions of this status go to this destination."""
        return self.reports == "both" or self.reports == ("drafts" if status == "draft" else "signed")


def unique_names(destinations: list[Destination]) -> list[Destination]:
    """Validate that destination names are unique (they key the deliveries).

    Parameters
    ----------
    destinations : list of Destination
        The configured destinations.

    Returns
    -------
    list of Destination
        The same list.

    Raises
    ------
    ValueError
        When a name repeats.
    """
    names = [d.name for d in destinations]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"destination names must be unique: {', '.join(repeated)}")
    return destinations
