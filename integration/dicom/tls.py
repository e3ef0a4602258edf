"""TLS for DICOM (PS3.15 Annex B, BCP 195 profile) and for the HTTPS API: contexts, checks, peer names.

One place builds every :class:`ssl.SSLContext` pacs-vlm uses, so all of them share one policy:
TLS 1.2 or newer, ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (TLS 1.3 suites are all
AEAD), no compression, no renegotiation.  Files are checked when the context is built, so a
missing file, an encrypted or mismatched key or an unreadable CA bundle is a clear
:class:`TlsConfigError` at start-up rather than a failed handshake later.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, NoReturn, Protocol

#: TLS 1.2 cipher suites of the BCP 195 profile (forward secrecy, AEAD only); TLS 1.3 suites stay OpenSSL's.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

_SUBJECT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


class TlsConfigError(ValueError):
    """A TLS setting cannot be used (the message names the file and what is wrong with it)."""


class TlsPeer(Protocol):
    """The settings of a DICOM peer we associate with (an export destination, a prior source)."""

    @property
    def host(self) -> str | None:
        """The host we connect to (sent as SNI, and the name its certificate must hold)."""

    @property
    def tls(self) -> bool:
        """Whether the association is over TLS."""

    @property
    def ca_file(self) -> Path | None:
        """PEM CA certificates the peer's certificate must chain to (the system's CAs when None)."""

    @property
    def certificate(self) -> Path | None:
        """Our PEM client certificate, for peers that require one."""

    @property
    def private_key(self) -> Path | None:
        """Its unencrypted key."""

    @property
    def verify_hostname(self) -> bool:
        """Whether the peer's certificate must name ``host``."""


def _no_password() -> NoReturn:
    raise TlsConfigError("is encrypted: give an unencrypted private key (readable only by the service user)")


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    return context


def _readable(path: Path, what: str) -> Path:
    if not path.is_file():
        raise TlsConfigError(f"{what} {path} does not exist or is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    return path


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    _readable(certificate, "certificate")
    _readable(private_key, "private key")
    try:
        context.load_cert_chain(certificate, private_key, password=_no_password)
    except TlsConfigError as exc:
        raise TlsConfigError(f"private key {private_key} {exc}") from None
    except ssl.SSLError as exc:
        text = str(exc)
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            raise TlsConfigError(f"private key {private_key} does not match certificate {certificate}") from None
        raise TlsConfigError(
            f"certificate {certificate} or private key {private_key} is not valid PEM ({exc.reason or text})"
        ) from None


def _load_cas(context: ssl.SSLContext, ca_file: Path) -> None:
    _readable(ca_file, "CA certificates file")
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"CA certificates file {ca_file} holds no valid PEM certificate ({exc.reason})") from None


def server_context(certificate: Path, private_key: Path, ca_certificates: Path | None = None) -> ssl.SSLContext:
    """Build the listener's (or the API's) TLS server context.

    Parameters
    ----------
    certificate : pathlib.Path
        PEM certificate (chain) the server presents.
    private_key : pathlib.Path
        Its unencrypted PEM private key.
    ca_certificates : pathlib.Path, optional
        PEM CA certificates: when given, every client must present a certificate issued by one of them.

    Returns
    -------
    ssl.SSLContext
        A server context: TLS 1.2+, BCP 195 ciphers, no compression, no renegotiation.

    Raises
    ------
    TlsConfigError
        A file is missing or unreadable, not PEM, the key is encrypted or does not match the certificate.
    """
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    _load_chain(context, certificate, private_key)
    if ca_certificates is not None:
        _load_cas(context, ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *,
    ca_file: Path | None = None,
    certificate: Path | None = None,
    private_key: Path | None = None,
    verify_hostname: bool = True,
) -> ssl.SSLContext:
    """Build a TLS client context for an outgoing association (the export C-STORE SCU).

    Parameters
    ----------
    ca_file : pathlib.Path, optional
        PEM CA certificates that may issue the peer's certificate; the system's CAs when omitted.
    certificate, private_key : pathlib.Path, optional
        Our client certificate and its unencrypted key, for peers that require one (both or neither).
    verify_hostname : bool
        Check that the peer's certificate names the host we connect to (DNS name or IP address).

    Returns
    -------
    ssl.SSLContext
        A client context that always verifies the peer's certificate chain.

    Raises
    ------
    TlsConfigError
        A file is missing or unreadable, not PEM, or the key does not match the certificate.
    """
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        _load_cas(context, ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if (certificate is None) != (private_key is None):
        raise TlsConfigError("a client certificate needs its private key (give both or neither)")
    if certificate is not None and private_key is not None:
        _load_chain(context, certificate, private_key)
    return context


def association_tls(peer: TlsPeer) -> tuple[ssl.SSLContext, str] | None:
    """Return pynetdicom's ``tls_args`` for an association with a configured peer (None when it is not TLS).

    Parameters
    ----------
    peer : TlsPeer
        The peer's settings: its TLS files and whether to verify its host name.

    Returns
    -------
    tuple of (ssl.SSLContext, str) or None
        The client context (:func:`client_context`) and the peer's host, sent as SNI and checked against its
        certificate when ``verify_hostname``.

    Raises
    ------
    TlsConfigError
        A TLS file cannot be used.
    """
    if not peer.tls:
        return None
    context = client_context(
        ca_file=peer.ca_file,
        certificate=peer.certificate,
        private_key=peer.private_key,
        verify_hostname=peer.verify_hostname,
    )
    return context, peer.host or ""


def subject_of(certificate: dict[str, Any] | None) -> str:
    """Return a certificate's subject as ``CN=...,O=...`` (empty when there is none).

    Parameters
    ----------
    certificate : dict, optional
        What :meth:`ssl.SSLSocket.getpeercert` returns.

    Returns
    -------
    str
        The subject's attributes in certificate order, RFC 4514 short names where known.
    """
    if not certificate:
        return ""
    parts = []
    for rdn in certificate.get("subject", ()):
        for name, value in rdn:
            parts.append(f"{_SUBJECT_NAMES.get(name, name)}={value}")
    return ",".join(parts)


def handshake_failure(exc: BaseException) -> str:
    """Describe why a TLS handshake failed, in a few words fit for a log line.

    Parameters
    ----------
    exc : BaseException
        What the handshake raised.

    Returns
    -------
    str
        OpenSSL's reason (``PEER_DID_NOT_RETURN_A_CERTIFICATE``, ``UNSUPPORTED_PROTOCOL`` ...) or the error's kind.
    """
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    text = str(exc).lower()
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, ConnectionAbortedError) and ("taking longer" in text or "timed out" in text)
    ):
        return "handshake timed out"
    return type(exc).__name__
