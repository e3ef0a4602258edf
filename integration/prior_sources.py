"""Configured archives that prior studies are found in and fetched from (``PACSVLM_PRIOR_SOURCES``).

A JSON list, configured like the destinations, for example::

    [{"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "10.0.0.10", "port": 104},
     {"name": "pacs-move", "kind": "dimse", "ae_title": "PACS", "host": "10.0.0.10", "port": 104,
      "retrieve": "move"},
     {"name": "pacs-tls", "kind": "dimse", "ae_title": "PACS", "host": "pacs.example.org", "port": 2762,
      "tls": true, "ca_file": "/etc/pacs-vlm/tls/pacs-ca.pem"},
     {"name": "vna", "kind": "dicomweb", "url": "https://vna.example.org/dicom-web",
      "username": "pacsvlm", "password": "..."},
     {"name": "cloud", "kind": "dicomweb", "url": "https://dicom.example.org/v1", "token": "..."}]

A ``dimse`` source is queried with C-FIND and retrieved from with C-GET (``"retrieve": "get"``, the
default: nothing to configure at the PACS) or C-MOVE (``"move"``: the PACS must know our AE title, host
and port, and sends to our listener).  A ``dicomweb`` source is queried with QIDO-RS and retrieved from
with WADO-RS; it may take HTTP Basic (``username``/``password``) or a Bearer ``token``, never both.
Credentials travel only over ``https`` (or to a loopback address); ``ca_file`` names the CAs its
certificate must chain to.

The model lives here, beside :mod:`integration.destinations`, rather than in :mod:`integration.priors`,
because the settings read it and :mod:`integration.priors` imports modules that import the settings:
a folder of its own would close an import cycle.  It needs pydantic and the standard library only.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

SourceKind = Literal["dimse", "dicomweb"]
RetrieveMethod = Literal["get", "move"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
#: The name our own store has among the sources of a prior (``study_priors.source``).
LOCAL_SOURCE = "local"


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PriorSource(BaseModel):
    """One archive that prior studies are searched in and fetched from.

    Attributes
    ----------
    name : str
        Unique name (letters, digits, ``_.-``; not ``local``), recorded with each prior found there.
    kind : str
        ``dimse`` (C-FIND, C-GET/C-MOVE) or ``dicomweb`` (QIDO-RS, WADO-RS).
    ae_title, host, port
        The DIMSE peer (kind ``dimse``).
    retrieve : str
        Kind ``dimse``: ``get`` (C-GET, instances come back on the query's association) or ``move``
        (C-MOVE to our AE title: the PACS must know it and sends to our listener).
    tls : bool
        Kind ``dimse``: associate over DICOM TLS.
    ca_file : pathlib.Path, optional
        PEM CA certificates the peer's certificate must chain to (the system's CAs when omitted); for a
        ``dicomweb`` source, an ``https`` url only.
    certificate, private_key : pathlib.Path, optional
        Our PEM client certificate and unencrypted key (both or neither), for peers that require one.
    verify_hostname : bool
        Kind ``dimse`` over TLS: check that the peer's certificate names ``host``.
    url : str
        Kind ``dicomweb``: base URL of the service (``.../dicom-web``).
    username, password : str, optional
        Kind ``dicomweb``: HTTP Basic credentials (both or neither).
    token : str, optional
        Kind ``dicomweb``: sent as ``Authorization: Bearer <token>``.
    timeout : float
        Seconds to connect and to wait for each answer.
    """

    # A refused entry's message never repeats what was given (it may hold a password or a token).
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str
    kind: SourceKind
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    retrieve: RetrieveMethod = "get"
    tls: bool = False
    ca_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    verify_hostname: bool = True
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)

    @field_validator("name")
    @classmethod
    def _name_valid(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("a prior source name is 1-64 letters, digits, '_', '.', '-'")
        if value.lower() == LOCAL_SOURCE:
            raise ValueError(f"{LOCAL_SOURCE!r} names our own store: give the prior source another name")
        return value

    @model_validator(mode="after")
    def _complete_for_kind(self) -> PriorSource:
        if self.kind == "dimse":
            self._check_dimse()
        else:
            self._check_dicomweb()
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private key (give both or neither)")
        return self

    def _check_dimse(self) -> None:
        if not (self.ae_title and self.host and self.port):
            raise ValueError("a dimse prior source needs ae_title, host and port")
        if not _AE_TITLE.fullmatch(self.ae_title) or not self.ae_title.strip():
            raise ValueError("ae_title must be 1-16 printable characters without backslash")
        web_only = [n for n in ("url", "username", "password", "token") if getattr(self, n) is not None]
        if web_only:
            raise ValueError(f"{', '.join(web_only)}: for dicomweb prior sources only")
        if not self.tls and any(f is not None for f in (self.ca_file, self.certificate, self.private_key)):
            raise ValueError("ca_file, certificate and private_key are for dimse prior sources with tls true")

    def _check_dicomweb(self) -> None:
        dimse_only = [n for n in ("ae_title", "host", "port") if getattr(self, n) is not None]
        if dimse_only or self.tls or self.retrieve != "get":
            raise ValueError("ae_title, host, port, tls and retrieve are for dimse prior sources")
        if not self.url or not self.url.startswith(("http://", "https://")):
            raise ValueError("a dicomweb prior source needs an http(s) url")
        parts = urlsplit(self.url)
        if not parts.hostname:
            raise ValueError("the url of a dicomweb prior source names no host")
        if (self.username is None) != (self.password is None):
            raise ValueError("HTTP Basic needs both username and password")
        if self.username is not None and self.token is not None:
            raise ValueError("give username/password or token, not both")
        secure = parts.scheme == "https"
        if not secure and (self.password is not None or self.token is not None) and not _loopback(parts.hostname):
            raise ValueError(
                "credentials of a dicomweb prior source go over https only (plain http is allowed to a "
                "loopback address): use an https url"
            )
        if not secure and any(f is not None for f in (self.ca_file, self.certificate, self.private_key)):
            raise ValueError("ca_file, certificate and private_key need an https url")


def unique_source_names(sources: list[PriorSource]) -> list[PriorSource]:
    """Validate that prior source names are unique (they name where each prior came from).

    Parameters
    ----------
    sources : list of PriorSource
        The configured sources.

    Returns
    -------
    list of PriorSource
        The same list.

    Raises
    ------
    ValueError
        When a name repeats.
    """
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"prior source names must be unique: {', '.join(repeated)}")
    return sources
