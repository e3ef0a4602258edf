"""Outbound authentication: Basic, Bearer, OAuth2 client credentials (cached, refreshed), client certificates.

Every peer is a real socket (tests.support.http_peers: ``http.server`` in a thread, TLS with the test
certificates of tests.support.certificates): an EHR intake, a DICOMweb STOW-RS endpoint and an OAuth2
token endpoint.  Secrets come from files and environment variables and must never show in an exception,
a ``repr``, or a log line.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from integration.destinations import Destination
from integration.export.auth import TOKENS
from integration.export.outgoing import DeliveryFailed, OutgoingDocument
from integration.export.senders import send
from tests.support.certificates import Certificates, make_certificates
from tests.support.http_peers import Recorder, Request, TokenEndpoint, https_context

PASSWORD = "pässword-ONLY-in-the-file"
TOKEN = "bearer-ONLY-in-the-environment"
FHIR = OutgoingDocument(
    "fhir", b'{"resourceType": "DiagnosticReport", "id": "r-1"}', "x.fhir.json", "application/fhir+json"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def fresh_tokens() -> Iterator[None]:
    TOKENS.clear()
    yield
    TOKENS.clear()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(f"  {PASSWORD}\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def no_secret_in(*texts: str, secrets: tuple[str, ...]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_basic_auth_reads_the_password_file_at_send_time(secret_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Recorder() as ehr:
        destination = Destination(
            name="ehr", kind="http", url=f"{ehr.url}/intake",
            auth={"type": "basic", "username": "pacsvlm", "password_file": str(secret_file)},
        )  # fmt: skip
        assert send(destination, FHIR, calling_ae="PACSVLM") == "HTTP 201"
        secret_file.write_text("rotated-password", encoding="utf-8")  # rotated: used without a restart
        send(destination, FHIR, calling_ae="PACSVLM")
    expected = [f"Basic {base64.b64encode(f'pacsvlm:{p}'.encode()).decode()}" for p in (PASSWORD, "rotated-password")]
    assert ehr.authorizations() == expected
    secret_file.unlink()
    with pytest.raises(DeliveryFailed) as missing:
        send(destination, FHIR, calling_ae="PACSVLM")
    assert str(missing.value) == (
        f"credentials of destination ehr: the password file {secret_file} cannot be read (No such file or directory)"
    )
    no_secret_in(repr(destination), str(destination.model_dump()), caplog.text, secrets=(PASSWORD, "rotated-password"))


def test_bearer_token_from_the_environment_on_stow_rs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNA_TOKEN", TOKEN)
    sr = OutgoingDocument("sr", b"DICM-bytes", "x.dcm", "application/dicom", "1.2", "1.2.3")
    with Recorder(lambda request: (200, {"Content-Type": "application/dicom+json"}, b"{}")) as vna:
        destination = Destination(
            name="vna", kind="dicomweb", url=f"{vna.url}/dicom-web", auth={"type": "bearer", "token_env": "VNA_TOKEN"}
        )
        assert send(destination, sr, calling_ae="PACSVLM") == "STOW-RS HTTP 200"
        [request] = vna.requests
    assert request.method == "POST" and request.path == "/dicom-web/studies"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    monkeypatch.delenv("VNA_TOKEN")
    with pytest.raises(DeliveryFailed, match="the token environment variable VNA_TOKEN is not set or empty"):
        send(destination, sr, calling_ae="PACSVLM")
    no_secret_in(repr(destination), secrets=(TOKEN,))


@pytest.mark.parametrize("client_authentication", ["basic", "post"])
def test_oauth2_token_is_fetched_once_for_two_sends_and_again_after_it_expires(
    client_authentication: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "client-secret"
    with TokenEndpoint(expires_in=2) as idp, Recorder() as ehr:
        secret.write_text(idp.client_secret)
        destination = Destination(
            name="ehr", kind="fhir", url=f"{ehr.url}/fhir",
            auth={"type": "oauth2", "token_url": f"{idp.url}/token", "client_id": idp.client_id,
                  "client_secret_file": str(secret), "scope": "system/DiagnosticReport.write",
                  "client_authentication": client_authentication},
        )  # fmt: skip
        for _ in range(2):
            assert send(destination, FHIR, calling_ae="PACSVLM") == "FHIR PUT HTTP 201"
        assert len(idp.issued) == 1  # one token for both sends
        assert ehr.authorizations() == [f"Bearer {idp.issued[0]}"] * 2
        time.sleep(2.1)  # past expires_in (refreshed 0.2 s before it, a tenth of a 2 s lifetime)
        send(destination, FHIR, calling_ae="PACSVLM")
        assert len(idp.issued) == 2 and ehr.authorizations()[-1] == f"Bearer {idp.issued[1]}"
    form = idp.form(0)
    assert form["grant_type"] == "client_credentials" and form["scope"] == "system/DiagnosticReport.write"
    basic = idp.requests[0].headers.get("Authorization", "")
    if client_authentication == "basic":
        assert basic.startswith("Basic ") and "client_secret" not in form
    else:
        assert not basic and form["client_id"] == idp.client_id and form["client_secret"] == idp.client_secret
    assert idp.requests[0].headers["Content-Type"] == "application/x-www-form-urlencoded"
    no_secret_in(caplog.text, repr(destination), secrets=(idp.client_secret, *idp.issued))


def test_a_401_drops_the_cached_token_and_retries_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with TokenEndpoint() as idp:
        monkeypatch.setenv("EHR_CLIENT_SECRET", idp.client_secret)
        revoked: set[str] = set()

        def answer(request: Request) -> tuple[int, dict[str, str], bytes]:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return (
                (401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, b"") if token in revoked else (200, {}, b"")
            )

        with Recorder(answer) as ehr:
            destination = Destination(
                name="ehr", kind="fhir", url=f"{ehr.url}/fhir",
                auth={"type": "oauth2", "token_url": f"{idp.url}/token", "client_id": idp.client_id,
                      "client_secret_env": "EHR_CLIENT_SECRET"},
            )  # fmt: skip
            assert send(destination, FHIR, calling_ae="PACSVLM") == "FHIR PUT HTTP 200"
            revoked.add(idp.issued[0])  # the server revokes the token before it expires
            assert send(destination, FHIR, calling_ae="PACSVLM") == "FHIR PUT HTTP 200"
            assert len(idp.issued) == 2 and len(ehr.requests) == 3
            assert ehr.requests[2].body == FHIR.content  # the retry sent the whole body again
            revoked.update(idp.issued)
            ehr.answer = lambda request: (401, {}, b"")  # every token refused: one retry, then the answer stands
            with pytest.raises(DeliveryFailed, match=r"answered HTTP 401$"):
                send(destination, FHIR, calling_ae="PACSVLM")
            assert len(idp.issued) == 3 and len(ehr.requests) == 5


def test_oauth2_refusals_never_show_the_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-NEVER-SHOWN"
    with TokenEndpoint() as idp, Recorder() as ehr:
        (tmp_path / "s").write_text(wrong)
        destination = Destination(
            name="ehr", kind="fhir", url=f"{ehr.url}/fhir",
            auth={"type": "oauth2", "token_url": f"{idp.url}/token", "client_id": idp.client_id,
                  "client_secret_file": str(tmp_path / "s")},
        )  # fmt: skip
        with pytest.raises(DeliveryFailed) as refused:
            send(destination, FHIR, calling_ae="PACSVLM")
        assert ehr.requests == []  # nothing sent without a token
    assert str(refused.value) == (
        f"OAuth2 token endpoint {idp.url}/token (destination ehr) answered HTTP 401 (invalid_client)"
    )
    context = refused.value.__context__  # what was raised before it (suppressed): no secret there either
    no_secret_in(str(context), repr(context), secrets=(wrong,))
    no_secret_in(str(refused.value), repr(refused.value), caplog.text, repr(destination), secrets=(wrong,))


def test_auth_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="exactly one of password_file or password_env"):
        Destination(name="x", kind="http", url="https://e/x", auth={"type": "basic", "username": "u"})
    with pytest.raises(ValidationError, match="auth needs an https url"):
        Destination(name="x", kind="http", url="http://ehr.example.org/x", auth={"type": "bearer", "token_env": "T"})
    with pytest.raises(ValidationError, match="auth is for http, fhir and dicomweb"):
        Destination(name="x", kind="folder", folder="/x", auth={"type": "bearer", "token_env": "T"})
    with pytest.raises(ValidationError, match="token_url must be an https url"):
        Destination(
            name="x", kind="fhir", url="https://e/fhir",
            auth={"type": "oauth2", "token_url": "http://idp.example.org/t", "client_id": "c",
                  "client_secret_env": "S"},
        )  # fmt: skip
    with pytest.raises(ValidationError, match="token_env must be an environment variable name"):
        Destination(name="x", kind="fhir", url="https://e/fhir", auth={"type": "bearer", "token_env": "A B"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):  # no inline secret
        Destination(name="x", kind="fhir", url="https://e/fhir", auth={"type": "bearer", "token": "abc"})
    with pytest.raises(ValidationError, match="for http, fhir and dicomweb destinations with an https url"):
        Destination(name="x", kind="fhir", url="http://e/fhir", ca_file="/ca.pem")


def test_client_certificate_over_https_for_fhir_and_the_token_endpoint(certs: Certificates) -> None:
    server = https_context(str(certs.server.certificate), str(certs.server.key), client_ca=str(certs.ca))
    with TokenEndpoint(tls=server) as idp, Recorder(tls=server) as ehr:
        Path(certs.ca.parent / "client-secret").write_text(idp.client_secret)
        fields: dict[str, object] = {
            "name": "ehr", "kind": "fhir", "url": f"{ehr.url}/fhir", "ca_file": str(certs.ca),
            "certificate": str(certs.client.certificate), "private_key": str(certs.client.key),
            "auth": {"type": "oauth2", "token_url": f"{idp.url}/token", "client_id": idp.client_id,
                     "client_secret_file": str(certs.ca.parent / "client-secret")},
        }  # fmt: skip
        assert send(Destination.model_validate(fields), FHIR, calling_ae="PACSVLM") == "FHIR PUT HTTP 201"
        assert ehr.requests[0].client_subject == "organizationName=pacs-vlm tests,commonName=modality-ct1"
        assert idp.requests[0].client_subject.endswith("commonName=modality-ct1")
        TOKENS.clear()
        anonymous = {**fields, "certificate": None, "private_key": None}
        refused = r"^OAuth2 token endpoint https://127\.0\.0\.1:\d+/token \(destination ehr\): ReadError \(TLS: TLSV13_"
        with pytest.raises(DeliveryFailed, match=refused):  # the token endpoint wants our certificate too
            send(Destination.model_validate(anonymous), FHIR, calling_ae="PACSVLM")
        rogue = {**fields, "ca_file": str(certs.rogue_ca)}
        with pytest.raises(DeliveryFailed, match=r"ConnectError \(TLS: CERTIFICATE_VERIFY_FAILED\)$"):
            send(Destination.model_validate(rogue), FHIR, calling_ae="PACSVLM")
    assert len(ehr.requests) == 1


def test_plain_http_post_with_a_client_certificate_over_https(certs: Certificates) -> None:
    server = https_context(str(certs.server.certificate), str(certs.server.key), client_ca=str(certs.ca))
    with Recorder(tls=server) as ehr:
        destination = Destination(
            name="ris", kind="http", url=f"{ehr.url}/hl7", documents=["hl7"], ca_file=certs.ca,
            certificate=certs.client.certificate, private_key=certs.client.key,
        )  # fmt: skip
        hl7 = OutgoingDocument("hl7", b"MSH|^~\\&|PACSVLM\r", "x.hl7", "x-application/hl7-v2+er7")
        assert send(destination, hl7, calling_ae="PACSVLM") == "HTTP 201"
        without = destination.model_copy(update={"certificate": None, "private_key": None})
        with pytest.raises(DeliveryFailed, match=r"^POST to https://127\.0\.0\.1:\d+/hl7: ReadError \(TLS: TLSV13_"):
            send(without, hl7, calling_ae="PACSVLM")
    assert [r.client_subject for r in ehr.requests] == ["organizationName=pacs-vlm tests,commonName=modality-ct1"]
