"""Configured destinations of report documents, and the rules that say what goes where.

``PACSVLM_DESTINATIONS`` is a JSON list, for example::

    [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "10.0.0.10", "port": 4242,
      "reports": "both"},
     {"name": "pacs-tls", "kind": "dicom", "ae_title": "PACS", "host": "pacs.example.org", "port": 2762,
      "tls": true, "ca_file": "/etc/pacs-vlm/tls/pacs-ca.pem",
      "certificate": "/etc/pacs-vlm/tls/scu.pem", "private_key": "/etc/pacs-vlm/tls/scu.key"},
     {"name": "vna", "kind": "dicomweb", "url": "https://vna.example.org/dicom-web", "reports": "signed",
      "auth": {"type": "bearer", "token_file": "/run/secrets/vna-token"}},
     {"name": "ris-a", "kind": "mllp", "host": "ris.site-a.example.org", "port": 2575, "sites": ["A"],
      "receiving_application": "RIS", "receiving_facility": "SITE-A", "tls": true,
      "ca_file": "/etc/pacs-vlm/tls/ris-ca.pem"},
     {"name": "ehr", "kind": "fhir", "url": "https://ehr.example.org/fhir/r4", "reports": "both",
      "modalities": ["CT", "MR"], "certificate": "/etc/pacs-vlm/tls/client.pem",
      "private_key": "/etc/pacs-vlm/tls/client.key",
      "auth": {"type": "oauth2", "token_url": "https://idp.example.org/oauth2/token", "client_id": "pacs-vlm",
               "client_secret_env": "PACSVLM_EHR_CLIENT_SECRET", "scope": "system/DiagnosticReport.write"}},
     {"name": "ris-http", "kind": "http", "url": "https://ris.example.org/hl7", "documents": ["hl7"],
      "auth": {"type": "basic", "username": "pacsvlm", "password_file": "/run/secrets/ris-password"}},
     {"name": "ehr-drop", "kind": "folder", "folder": "/exports/fhir", "documents": ["fhir", "hl7"]}]

DICOM peers (C-STORE) and DICOMweb servers (STOW-RS) take the SR, its TID 1500 and the draft's key images
(``documents``); a RIS over MLLP takes the HL7 ORU
(and answers with an ACK); a FHIR server takes the DiagnosticReport by ``PUT {url}/DiagnosticReport/{id}``
(one resource per report across its versions); a folder or an HTTP endpoint (POST) takes FHIR and/or
HL7 (a folder may also take the DICOM files).

``sites`` and ``modalities`` say whose reports a destination takes: the site codes of the report's study
and the modalities of its series (none listed: every site, every modality), so site A's reports never
reach site B's RIS.

A DICOM peer or a RIS with ``"tls": true`` is reached over TLS (TLS 1.2+, BCP 195 ciphers): its
certificate must chain to ``ca_file`` (the system's CAs when omitted) and, unless
``verify_hostname`` is false, name ``host``; ``certificate`` and ``private_key`` give our client
certificate to peers that require one.  HTTP, FHIR and DICOMweb destinations use TLS when their url is
``https://``, with the same four settings; their ``auth`` (Basic, Bearer, OAuth2 client credentials:
:mod:`integration.destination_auth`) names its secrets by file or environment variable only, and
credentials go only over https (or plain http on the loopback interface).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from integration.destination_auth import Auth, plain_http_allowed

Document = Literal["sr", "tid1500", "kos", "fhir", "hl7"]
Kind = Literal["dicom", "dicomweb", "folder", "http", "mllp", "fhir"]
ReportSelection = Literal["drafts", "signed", "both"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_.-]{0,15}$")
#: HL7 HD values we write into MSH-5/MSH-6: no delimiter or control character can end a field there.
_HL7_NAME = re.compile(r"^[^|^~\\&\x00-\x1f\x7f]{0,180}$")
_DEFAULT_DOCUMENTS: dict[str, tuple[Document, ...]] = {
    "dicom": ("sr", "tid1500", "kos"),
    "dicomweb": ("sr", "tid1500", "kos"),
    "folder": ("fhir", "hl7"),
    "http": ("fhir",),
    "mllp": ("hl7",),
    "fhir": ("fhir",),
}
_ALLOWED_DOCUMENTS: dict[str, frozenset[str]] = {
    "dicom": frozenset({"sr", "tid1500", "kos"}),
    "dicomweb": frozenset({"sr", "tid1500", "kos"}),
    "folder": frozenset({"sr", "tid1500", "kos", "fhir", "hl7"}),
    "http": frozenset({"fhir", "hl7"}),
    "mllp": frozenset({"hl7"}),
    "fhir": frozenset({"fhir"}),
}
#: Kinds reached over a socket of their own (``tls`` true/false); the HTTP kinds use TLS by their url.
_SOCKET_KINDS = frozenset({"dicom", "mllp"})
_HTTP_KINDS = frozenset({"dicomweb", "http", "fhir"})


class Destination(BaseModel):
    """One place report documents are delivered to.

    Attributes
    ----------
    name : str
        Unique name (letters, digits, ``_.-``), stored with each delivery.
    kind : str
        ``dicom`` (C-STORE SCU), ``dicomweb`` (STOW-RS), ``folder``, ``http`` (POST), ``mllp`` (HL7 v2 over
        MLLP, waiting for the ACK) or ``fhir`` (``PUT DiagnosticReport/{id}`` on a FHIR server).
    reports : str
        Which report versions go there: ``drafts``, ``signed`` or ``both``.
    documents : tuple of str
        What is sent: ``sr`` (the TID 2000 SR), ``tid1500`` (the TID 1500 Measurement Report beside it, which
        viewers display), ``kos`` (the draft's key images: the images the model saw), ``fhir``, ``hl7``.  Defaults
        by kind: ``sr``, ``tid1500`` and ``kos`` for ``dicom`` and ``dicomweb``.  Signed versions have no key
        images document (the draft's lists the images, and they do not change on signing): a signed version
        goes without ``kos`` (:meth:`documents_for`).
    sites : tuple of str
        Site codes whose reports go there (upper-cased); empty: every site's.
    modalities : tuple of str
        Modalities (``CT``, ``MR`` ...; upper-cased) whose reports go there; empty: every modality's.
    ae_title : str
        The DICOM peer's AE title (kind ``dicom``).
    host, port
        The DICOM peer or the RIS (kinds ``dicom`` and ``mllp``).
    url : str
        Base URL of the DICOMweb service (``.../dicom-web``) or of the FHIR server (``.../fhir/r4``), or the
        HTTP endpoint.
    folder : pathlib.Path
        Target folder (kind ``folder``).
    receiving_application, receiving_facility : str
        MSH-5 and MSH-6 of the HL7 messages sent there.
    timeout : float
        Seconds per attempt (for ``mllp``: connecting, sending and waiting for the ACK together).
    tls : bool
        Kinds ``dicom`` and ``mllp``: connect over TLS.
    ca_file : pathlib.Path, optional
        PEM CA certificates the peer's certificate must chain to (the system's CAs when omitted).
    certificate, private_key : pathlib.Path, optional
        Our PEM client certificate and unencrypted key (both or neither), for peers that require one.
    verify_hostname : bool
        Check that the peer's certificate names ``host`` (or the url's host).
    auth : BasicAuth or BearerAuth or OAuth2Auth, optional
        Kinds ``http``, ``fhir`` and ``dicomweb``: how we authenticate (:mod:`integration.destination_auth`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Kind
    reports: ReportSelection = "signed"
    documents: tuple[Document, ...] = ()
    sites: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = None
    folder: Path | None = None
    receiving_application: str = Field(default="RIS", pattern=_HL7_NAME.pattern)
    receiving_facility: str = Field(default="", pattern=_HL7_NAME.pattern)
    timeout: float = Field(default=30.0, gt=0, le=600)
    tls: bool = False
    ca_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    verify_hostname: bool = True
    auth: Auth | None = None

    @field_validator("name")
    @classmethod
    def _name_valid(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("a destination name is 1-64 letters, digits, '_', '.', '-'")
        return value

    @field_validator("sites", "modalities")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        codes = tuple(dict.fromkeys(code.strip().upper() for code in value))
        wrong = [code for code in codes if not _CODE.fullmatch(code)]
        if wrong:
            raise ValueError("site codes and modalities are 1-16 letters, digits, '_', '.', '-'")
        return codes

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
        if self.kind == "mllp" and not (self.host and self.port):
            raise ValueError("an mllp destination needs host and port")
        if self.kind in _HTTP_KINDS and not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError(f"a {self.kind} destination needs an http(s) url")
        if self.kind == "folder" and self.folder is None:
            raise ValueError("a folder destination needs folder")
        self._check_tls()
        if self.auth is not None:
            if self.kind not in _HTTP_KINDS:
                raise ValueError("auth is for http, fhir and dicomweb destinations")
            assert self.url is not None
            if not self.url.startswith("https://") and not plain_http_allowed(self.url):
                raise ValueError("auth needs an https url (credentials go in clear only to the loopback interface)")
        return self

    def _check_tls(self) -> None:
        tls_files = (self.ca_file, self.certificate, self.private_key)
        https = self.kind in _HTTP_KINDS and (self.url or "").startswith("https://")
        if self.tls and self.kind not in _SOCKET_KINDS:
            raise ValueError("tls is for dicom and mllp destinations (use an https url for the others)")
        if any(f is not None for f in tls_files) and not ((self.kind in _SOCKET_KINDS and self.tls) or https):
            raise ValueError(
                "ca_file, certificate and private_key are for dicom and mllp destinations with tls true, "
                "and for http, fhir and dicomweb destinations with an https url"
            )
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private key (give both or neither)")

    def takes(self, status: Literal["draft", "signed"]) -> bool:
        """Whether report versions of this status go to this destination."""
        return self.reports == "both" or self.reports == ("drafts" if status == "draft" else "signed")

    def documents_for(self, status: Literal["draft", "signed"]) -> tuple[Document, ...]:
        """Return what a report version of this status sends here: a signed version goes without ``kos``."""
        return self.documents if status == "draft" else tuple(d for d in self.documents if d != "kos")

    def serves(self, site_code: str | None, modalities: Iterable[str | None]) -> bool:
        """Whether reports of a study of this site and these modalities go to this destination.

        Parameters
        ----------
        site_code : str or None
            The code of the study's site (None: the study has no site).
        modalities : iterable of str or None
            The modalities of the study's series.

        Returns
        -------
        bool
            True when ``sites`` is empty or names the site, and ``modalities`` is empty or names one of the
            study's.  A study without a site never goes to a destination that lists sites.
        """
        if self.sites and (site_code is None or site_code.strip().upper() not in self.sites):
            return False
        if self.modalities:
            theirs = {m.strip().upper() for m in modalities if m}
            return bool(theirs & set(self.modalities))
        return True

    @property
    def uses_tls(self) -> bool:
        """Whether documents travel over TLS (``tls`` true, or an https url)."""
        return self.tls or (self.url or "").startswith("https://")


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
