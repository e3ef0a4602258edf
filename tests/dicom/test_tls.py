"""DICOM TLS on the listener with real peers: dcmtk storescu/echoscu over TLS, Python TLS clients, bad settings.

Certificates are made by the test (``tests/support/certificates.py``): a CA, the listener's certificate, a modality's
client certificate and a client certificate of a rogue CA.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from integration.samples import write_ct_series
from tests.support.certificates import Certificates, make_certificates
from tests.support.peers import REPO, SCU_AE, ListenerProcess, storescu, wait_until
from tests.support.records import db_rows
from tests.support.services import free_port

ECHOSCU = "/usr/bin/echoscu"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_env(certs: Certificates, *, require_client: bool = True, tls_port: int | None = None) -> dict[str, str]:
    env = {
        "PACSVLM_TLS_CERTIFICATE": str(certs.server.certificate),
        "PACSVLM_TLS_PRIVATE_KEY": str(certs.server.key),
    }
    if require_client:
        env["PACSVLM_TLS_CA_CERTIFICATES"] = str(certs.ca)
    if tls_port is not None:
        env["PACSVLM_TLS_PORT"] = str(tls_port)
    return env


def tls_flags(certs: Certificates, client: str = "client", ca: Path | None = None) -> list[str]:
    """dcmtk options: our client certificate, the CA that must have issued the listener's, BCP 195 profile."""
    pair = getattr(certs, client)
    return ["+tls", str(pair.key), str(pair.certificate), "+cf", str(ca or certs.ca), "--profile-bcp195"]


def echoscu(port: int, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [ECHOSCU, "-aet", SCU_AE, "-aec", "PACSVLM", "-to", "10", "-ta", "10", *flags, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta group."""
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


def stored_paths(listener: ListenerProcess) -> dict[str, Path]:
    rows = db_rows(listener.database_url, "SELECT sop_instance_uid, storage_path FROM instances")
    return {uid: listener.instance_root / path for uid, path in rows}


def python_tls_client(port: int, context: ssl.SSLContext) -> bytes:
    """Connect, hand-shake, send the start of an A-ASSOCIATE-RQ and read what comes back."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"\x01\x00")
        return tls.recv(1024)


def refusal(port: int, context: ssl.SSLContext) -> str:
    """How a Python TLS client was refused: a handshake error, or (TLS 1.3) the connection closed after it."""
    try:
        answer = python_tls_client(port, context)
    except (ssl.SSLError, ConnectionError) as exc:
        return type(exc).__name__
    assert answer == b"", answer  # a client the listener accepted would wait for the rest of its request
    return "closed"


def test_storescu_over_tls_stores_byte_for_byte_and_the_plain_port_serves_on(
    listener_factory: Callable[..., ListenerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    certs: Certificates,
    tmp_path: Path,
) -> None:
    tls_port = free_port()
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=tls_env(certs, tls_port=tls_port))
    wait_until(lambda: "(TLS)" in listener.log(), message="the TLS port announced")
    series = write_ct_series(tmp_path / "ct", 12)

    echo = echoscu(tls_port, *tls_flags(certs))
    assert echo.returncode == 0, echo.stderr
    sent = storescu(tls_port, series[:8], extra=tls_flags(certs))
    assert sent.returncode == 0, sent.stderr
    plain = storescu(listener.port, series[8:])  # plain TCP stays on listen_port beside the TLS port
    assert plain.returncode == 0, plain.stderr

    stored = stored_paths(listener)
    assert len(stored) == 12
    for source in series:
        uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(source), source.name
    assert listener.partial_files() == []

    log = listener.log()
    assert "TLS TLSv1.3 from 127.0.0.1" in log or "TLS TLSv1.2 from 127.0.0.1" in log
    assert "client certificate O=pacs-vlm tests,CN=modality-ct1" in log
    audited = wait_until(
        lambda: (
            rows
            if len(
                rows := db_rows(
                    migrated_postgres_url, "SELECT actor, detail FROM audit_events WHERE action = 'dicom.association'"
                )
            )
            == 3
            else None
        ),
        message="three associations audited",
    )
    over_tls = [detail for _, detail in audited if detail.get("tls")]
    assert len(over_tls) == 2 and len(audited) == 3  # echo and store over TLS, one plain association
    assert {d["peer_certificate"] for d in over_tls} == {"O=pacs-vlm tests,CN=modality-ct1"}
    assert {d["tls"] for d in over_tls} <= {"TLSv1.2", "TLSv1.3"}
    assert sum(d["instances"].get("stored", 0) for d in over_tls) == 8


def test_refused_tls_clients_are_logged_and_the_listener_serves_on(
    listener_factory: Callable[..., ListenerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    certs: Certificates,
    tmp_path: Path,
) -> None:
    # TLS only: listen_port speaks TLS and nothing else
    env = {**tls_env(certs), "PACSVLM_ACSE_TIMEOUT": "2"}  # also the time a handshake may take
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=env)
    port = listener.port
    [file] = write_ct_series(tmp_path / "ct", 1)

    # a client certificate from another CA
    rogue = echoscu(port, *tls_flags(certs, "rogue_client"))
    assert rogue.returncode != 0
    # no client certificate at all (Python client; dcmtk's +tla would offer anonymous suites only)
    assert refusal(port, ssl.create_default_context(cafile=certs.ca))
    # a TLS 1.1-only client: OpenSSL may refuse to offer it at all; the handshake fails either way
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(certs.ca)
    old.load_cert_chain(certs.client.certificate, certs.client.key)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it is the point of the test
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):  # fails in the handshake, before any DICOM byte
        python_tls_client(port, old)
    # plain DICOM to the TLS port
    plain = storescu(port, [file])
    assert plain.returncode != 0
    # the listener does not trust a server it cannot verify either way round: the client refuses a wrong CA
    wrong_ca = echoscu(port, *tls_flags(certs, "client", ca=certs.rogue_ca))
    assert wrong_ca.returncode != 0
    # a client that connects and never starts the handshake is closed after the ACSE timeout
    with socket.create_connection(("127.0.0.1", port), timeout=60) as silent:
        assert silent.recv(1024) == b""

    assert db_rows(migrated_postgres_url, "SELECT id FROM instances") == []
    log = listener.log()
    refused = [line for line in log.splitlines() if "TLS connection from 127.0.0.1" in line and "refused" in line]
    reasons = {line.rsplit(": ", 1)[-1] for line in refused}
    assert {
        "CERTIFICATE_VERIFY_FAILED",  # the rogue CA's client certificate
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",  # no client certificate
        "WRONG_VERSION_NUMBER",  # plain DICOM on the TLS port
        "TLSV1_ALERT_UNKNOWN_CA",  # the client did not trust our certificate
        "handshake timed out",  # the silent client
    } <= reasons, log[-3000:]
    assert reasons <= {
        "CERTIFICATE_VERIFY_FAILED",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "WRONG_VERSION_NUMBER",
        "TLSV1_ALERT_UNKNOWN_CA",
        "handshake timed out",
        "UNSUPPORTED_PROTOCOL",  # the TLS 1.1 client, where OpenSSL lets it offer TLS 1.1 at all
    }, reasons
    assert "Traceback" not in log

    # and it serves on
    assert echoscu(port, *tls_flags(certs)).returncode == 0
    sent = storescu(port, [file], extra=tls_flags(certs))
    assert sent.returncode == 0, sent.stderr
    assert len(db_rows(migrated_postgres_url, "SELECT id FROM instances")) == 1
    assert listener.process is not None and listener.process.poll() is None


def test_without_required_client_certificates_any_tls_client_may_associate(
    listener_factory: Callable[..., ListenerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    certs: Certificates,
) -> None:
    listener = listener_factory(migrated_postgres_url, redis_url, extra_env=tls_env(certs, require_client=False))
    echo = echoscu(listener.port, *tls_flags(certs, "rogue_client"))  # its certificate is not asked for
    assert echo.returncode == 0, echo.stderr
    assert "client certificate none" in listener.log()
    [(detail,)] = wait_until(
        lambda: db_rows(migrated_postgres_url, "SELECT detail FROM audit_events WHERE action = 'dicom.association'"),
        message="the association audited",
    )
    assert detail["peer_certificate"] == "none" and detail["tls"].startswith("TLSv1.")


def listen(database_url: str, data_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    full.update(
        PACSVLM_DATA_DIR=str(data_dir),
        PACSVLM_DATABASE_URL=database_url,
        PACSVLM_ACCEPT_ANY_CALLING_AE="true",
        PACSVLM_LISTEN_HOST="127.0.0.1",
        PACSVLM_LISTEN_PORT=str(free_port()),
        **env,
    )
    command = [sys.executable, "-m", "worker.cli", "listen"]
    return subprocess.run(command, cwd=REPO, env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"PACSVLM_TLS_CERTIFICATE": "{dir}/missing.pem", "PACSVLM_TLS_PRIVATE_KEY": "{key}"}, "does not exist"),
        ({"PACSVLM_TLS_CERTIFICATE": "{cert}", "PACSVLM_TLS_PRIVATE_KEY": "{client_key}"}, "does not match"),
        ({"PACSVLM_TLS_CERTIFICATE": "{cert}", "PACSVLM_TLS_PRIVATE_KEY": "{encrypted}"}, "is encrypted"),
        ({"PACSVLM_TLS_CERTIFICATE": "{cert}", "PACSVLM_TLS_PRIVATE_KEY": "{cert}"}, "not valid PEM"),
        (
            {
                "PACSVLM_TLS_CERTIFICATE": "{cert}",
                "PACSVLM_TLS_PRIVATE_KEY": "{key}",
                "PACSVLM_TLS_CA_CERTIFICATES": "{key}",
            },
            "holds no valid PEM certificate",
        ),
        ({"PACSVLM_TLS_CERTIFICATE": "{cert}"}, "needs both tls_certificate and tls_private_key"),
        ({"PACSVLM_TLS_PORT": "2762"}, "need tls_certificate and tls_private_key"),
    ],
    ids=["missing-file", "key-mismatch", "encrypted-key", "key-not-pem", "ca-not-pem", "key-missing", "port-alone"],
)
def test_bad_tls_settings_stop_listen_with_a_clear_error(
    migrated_postgres_url: str, certs: Certificates, tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    names = {
        "dir": tmp_path,
        "cert": certs.server.certificate,
        "key": certs.server.key,
        "client_key": certs.client.key,
        "encrypted": certs.encrypted_key,
    }
    env = {name: value.format(**names) for name, value in settings.items()}
    result = listen(migrated_postgres_url, tmp_path / "data", env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
