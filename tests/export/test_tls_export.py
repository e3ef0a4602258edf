"""The export C-STORE SCU over DICOM TLS, to real peers: our own listener with TLS, and dcmtk's storescp +tls."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError

from integration.config import Settings
from integration.destinations import Destination
from integration.export.outgoing import DeliveryFailed, OutgoingDocument
from integration.export.senders import send
from integration.reports.drafts import ensure_draft_sr
from tests.export.test_delivery import stored_report
from tests.support.certificates import Certificates, Pair, make_certificates
from tests.support.peers import ListenerProcess, wait_until
from tests.support.records import db_rows
from tests.support.services import free_port, stop_process, wait_for_port

STORESCP = "/usr/bin/storescp"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def draft_sr(migrated_postgres_url: str, tmp_path: Path) -> tuple[OutgoingDocument, Path]:
    """The draft SR of a stored report, as the delivery task sends it."""
    settings = Settings(data_dir=tmp_path / "report", database_url=migrated_postgres_url)
    path = ensure_draft_sr(settings, stored_report(settings))
    sr = pydicom.dcmread(path)
    document = OutgoingDocument(
        "sr", path.read_bytes(), path.name, "application/dicom", str(sr.SOPClassUID), str(sr.SOPInstanceUID)
    )
    return document, path


def tls_destination(port: int, certs: Certificates, **overrides: object) -> Destination:
    fields: dict[str, object] = {
        "name": "pacs-tls",
        "kind": "dicom",
        "ae_title": "PACSVLM",
        "host": "127.0.0.1",
        "port": port,
        "tls": True,
        "ca_file": certs.ca,
        "certificate": certs.client.certificate,
        "private_key": certs.client.key,
        "timeout": 10,
    }
    return Destination.model_validate({**fields, **overrides})


def test_the_sr_goes_to_a_tls_listener_that_requires_our_client_certificate(
    listener_factory: Callable[..., ListenerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    certs: Certificates,
    draft_sr: tuple[OutgoingDocument, Path],
) -> None:
    document, path = draft_sr
    tls_port = free_port()
    env = {
        "PACSVLM_TLS_CERTIFICATE": str(certs.server.certificate),
        "PACSVLM_TLS_PRIVATE_KEY": str(certs.server.key),
        "PACSVLM_TLS_CA_CERTIFICATES": str(certs.ca),
        "PACSVLM_TLS_PORT": str(tls_port),
    }
    # the receiving listener has a database of its own
    listener = listener_factory(
        migrated_postgres_url, redis_url, calling_aes={"REPORTS": {}}, extra_env=env, ae_title="PACSVLM"
    )
    wait_until(lambda: "(TLS)" in listener.log(), message="the TLS port announced")

    receipt = send(tls_destination(tls_port, certs), document, calling_ae="REPORTS")
    assert receipt == "C-STORE status 0x0000"
    [(storage_path,)] = db_rows(
        migrated_postgres_url,
        "SELECT storage_path FROM instances WHERE sop_instance_uid = :uid",
        uid=document.sop_instance_uid,
    )
    stored = pydicom.dcmread(listener.instance_root / storage_path)
    sent = pydicom.dcmread(path)
    assert stored.ContentSequence == sent.ContentSequence and stored.VerificationFlag == "UNVERIFIED"
    assert "client certificate O=pacs-vlm tests,CN=modality-ct1" in listener.log()

    # the same destination without our client certificate, or trusting another CA: refused, nothing stored twice
    anonymous = tls_destination(tls_port, certs, certificate=None, private_key=None)
    with pytest.raises(DeliveryFailed, match=r"association with PACSVLM@127\.0\.0\.1:\d+ .*TLS"):
        send(anonymous, document, calling_ae="REPORTS")
    with pytest.raises(DeliveryFailed, match="TLS"):
        send(tls_destination(tls_port, certs, ca_file=certs.rogue_ca), document, calling_ae="REPORTS")
    # plain DICOM on the TLS port is refused too
    with pytest.raises(DeliveryFailed, match=r"aborted|not established"):
        send(tls_destination(tls_port, certs, tls=False, ca_file=None, certificate=None, private_key=None),
             document, calling_ae="REPORTS")  # fmt: skip
    assert len(db_rows(migrated_postgres_url, "SELECT id FROM instances")) == 2  # CT_small and the SR
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in listener.log()


@pytest.fixture
def storescp_tls(tmp_path: Path, certs: Certificates) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp serving TLS with a certificate that names only other.example.org; requires client certs."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    server: Pair = certs.other_name_server
    process = subprocess.Popen(
        [STORESCP, "+tls", str(server.key), str(server.certificate), "+cf", str(certs.ca), "--require-peer-cert",
         "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port)
        yield port, out
    finally:
        stop_process(process)


def test_the_sr_goes_to_dcmtk_storescp_over_tls_and_the_host_name_is_checked(
    storescp_tls: tuple[int, Path], certs: Certificates, draft_sr: tuple[OutgoingDocument, Path]
) -> None:
    port, out = storescp_tls
    document, path = draft_sr
    destination = tls_destination(port, certs, ae_title="STORESCP")
    with pytest.raises(DeliveryFailed):  # its certificate names other.example.org, not 127.0.0.1
        send(destination, document, calling_ae="REPORTS")
    assert list(out.iterdir()) == []
    relaxed = tls_destination(port, certs, ae_title="STORESCP", verify_hostname=False)
    assert send(relaxed, document, calling_ae="REPORTS") == "C-STORE status 0x0000"
    [received] = wait_until(lambda: list(out.iterdir()), message="storescp wrote the SR")
    assert pydicom.dcmread(received).SOPInstanceUID == document.sop_instance_uid
    assert pydicom.dcmread(received).ContentSequence == pydicom.dcmread(path).ContentSequence


def test_tls_settings_of_a_destination_are_checked(
    certs: Certificates, tmp_path: Path, draft_sr: tuple[OutgoingDocument, Path]
) -> None:
    with pytest.raises(ValidationError, match="both or neither"):
        tls_destination(104, certs, private_key=None)
    with pytest.raises(ValidationError, match="tls true"):
        tls_destination(104, certs, tls=False)
    with pytest.raises(ValidationError, match="tls is for dicom"):
        Destination(name="vna", kind="dicomweb", url="https://vna.example.org/dicom-web", tls=True)
    document, _ = draft_sr
    missing = tls_destination(104, certs, ca_file=tmp_path / "missing.pem")
    with pytest.raises(
        DeliveryFailed, match=r"TLS settings of destination pacs-tls: CA certificates file .* does not exist"
    ):
        send(missing, document, calling_ae="REPORTS")
