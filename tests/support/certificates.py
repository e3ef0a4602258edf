"""Certificates made by the tests (``cryptography``): a CA, a server, a client, and a client of a rogue CA."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    """A PEM certificate and its unencrypted PEM key on disk."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class Certificates:
    """What a TLS test needs."""

    ca: Path
    server: Pair  # names localhost and 127.0.0.1
    client: Pair  # issued by ca
    rogue_ca: Path
    rogue_client: Pair  # issued by rogue_ca
    other_name_server: Pair  # issued by ca, names only other.example.org
    encrypted_key: Path  # the server's key, encrypted with a password


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pacs-vlm tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    names: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: rsa.RSAPrivateKey, password: bytes | None = None) -> Path:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)
    return path


def _write_certificate(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def make_certificates(folder: Path) -> Certificates:
    """Write a CA, server and client certificates (and a rogue CA with its client) into ``folder``.

    The server certificate names ``localhost`` and ``127.0.0.1``; the client certificate's subject is
    ``O=pacs-vlm tests,CN=modality-ct1``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, rogue_key = _key(), _key()
    ca = _certificate("pacs-vlm test CA", ca_key, None, ca=True)
    rogue = _certificate("rogue CA", rogue_key, None, ca=True)
    issued_by_ca = (ca.subject, ca_key)

    def leaf(stem: str, subject: str, issuer: tuple[x509.Name, rsa.RSAPrivateKey], **kwargs: object) -> Pair:
        key = _key()
        certificate = _certificate(subject, key, issuer, **kwargs)  # type: ignore[arg-type]
        return Pair(_write_certificate(folder / f"{stem}.pem", certificate), _write_key(folder / f"{stem}.key", key))

    server_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = leaf("server", "pacs-vlm listener", issued_by_ca, names=server_names,
                  usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])  # fmt: skip
    client = leaf("client", "modality-ct1", issued_by_ca, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    rogue_client = leaf("rogue-client", "rogue modality", (rogue.subject, rogue_key),
                        usage=[ExtendedKeyUsageOID.CLIENT_AUTH])  # fmt: skip
    other = leaf("other-name", "other server", issued_by_ca, names=[x509.DNSName("other.example.org")],
                 usage=[ExtendedKeyUsageOID.SERVER_AUTH])  # fmt: skip
    server_key = serialization.load_pem_private_key(server.key.read_bytes(), password=None)
    assert isinstance(server_key, rsa.RSAPrivateKey)
    return Certificates(
        ca=_write_certificate(folder / "ca.pem", ca),
        server=server,
        client=client,
        rogue_ca=_write_certificate(folder / "rogue-ca.pem", rogue),
        rogue_client=rogue_client,
        other_name_server=other,
        encrypted_key=_write_key(folder / "server-encrypted.key", server_key, b"secret"),
    )
