"""The prior sources' clients against a real PACS: Orthanc (DIMSE and DICOMweb) holding the prior data set.

C-FIND and QIDO-RS find the patient's studies (issuer kept apart), a study's series with one instance's SOP
class and image type; C-GET and WADO-RS bring one chosen series through the real intake (PostgreSQL, the
instance store) and nothing else; C-MOVE sends to a pynetdicom storage SCP under our AE title.  A wrong
password, a PACS that is down and a PACS that does not know us end in an :class:`ArchiveError` that says why
without patient data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pynetdicom import AE, AllStoragePresentationContexts, evt

from integration.config import Settings
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import Origin, StoreOutcome
from integration.intake.storage import InstanceStore
from integration.prior_sources import PriorSource
from integration.priors.archive import ArchiveError, InstanceSink, PriorArchive, open_archive
from integration.priors.dimse import RETRIEVE_SOP_CLASSES
from tests.support.certificates import Certificates, make_certificates
from tests.support.orthanc import DICOMWEB_PLUGIN, OrthancServer
from tests.support.priors import ISSUER, OTHER_ISSUER, PATIENT_ID, PriorPacs
from tests.support.records import db_rows
from tests.support.services import free_port


@pytest.fixture
def settings(migrated_postgres_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=migrated_postgres_url, storage_dir=tmp_path / "store", min_free_bytes=0, fsync=False)


@pytest.fixture
def intake(settings: Settings) -> Iterator[InstanceIntake]:
    made = InstanceIntake(settings, InstanceStore(settings.instance_root, fsync=False, min_free_bytes=0))
    yield made
    made.close()


def intake_sink(intake: InstanceIntake) -> InstanceSink:
    origin = Origin(calling_ae="PRIORPACS", source="dicom", site_id=None, stable_seconds=30.0)

    def sink(data: bytes, transfer_syntax: str) -> StoreOutcome:
        return intake.store(data, transfer_syntax, origin)

    return sink


def stored_instances(settings: Settings) -> dict[str, set[str]]:
    """Series UID -> the SOP Instance UIDs the store holds."""
    rows = db_rows(
        settings.database_url,
        "SELECT s.series_uid, i.sop_instance_uid FROM instances i JOIN series s ON s.id = i.series_id",
    )
    held: dict[str, set[str]] = {}
    for series_uid, sop_uid in rows:
        held.setdefault(series_uid, set()).add(sop_uid)
    return held


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_find_the_patients_studies_and_a_studys_series(prior_pacs: PriorPacs, kind: str) -> None:
    data = prior_pacs.data
    archive = open_archive(prior_pacs.source(kind), Settings())
    try:
        found = {m.study_uid: m for m in archive.find_studies(PATIENT_ID, ISSUER)}
        assert set(found) == {s.uid for s in data.patients_studies}  # not the other issuer's, not the namesake's
        ct = found[data.ct.uid]
        assert (ct.source, ct.patient_id, ct.issuer, ct.study_date) == ("pacs", PATIENT_ID, ISSUER, "20240301")
        assert set(ct.modalities) == {"CT", "SR"} and ct.accession == data.ct.accession
        assert ct.description == data.ct.description
        # Asked without an issuer, the archive's issuer comes back with each study, for the matching to judge.
        issuers = {m.study_uid: m.issuer for m in archive.find_studies(PATIENT_ID, None)}
        assert issuers[data.other_issuer.uid] == OTHER_ISSUER and issuers[data.ct.uid] == ISSUER
        assert data.same_name.uid not in issuers

        series = archive.find_series(data.ct.uid)
        assert [s.series_uid for s in series] == [s.uid for s in data.ct.series]  # by series number
        for match, spec in zip(series, data.ct.series, strict=True):
            assert (match.modality, match.series_number, match.description) == (
                spec.modality,
                spec.number,
                spec.description,
            )
            assert match.instances == spec.instances and match.body_part == "CHEST"
            assert match.sop_class_uids == (spec.sop_class_uid,) and match.image_types == spec.image_type
    finally:
        archive.close()


def test_c_get_brings_only_the_chosen_series_through_the_intake(
    prior_pacs: PriorPacs, settings: Settings, intake: InstanceIntake
) -> None:
    ct = prior_pacs.data.ct
    thick, report = ct.series_named("Chest 10mm"), ct.series_named("Report")
    archive = open_archive(prior_pacs.source("dimse"), settings)

    result = archive.retrieve(ct.uid, [thick.uid, report.uid], intake_sink(intake))

    assert (result.stored, result.duplicates, result.failed, result.problems) == (6, 0, 0, ())
    assert result.bytes > 5 * 64 * 64 * 2 and result.seconds < 10
    held = stored_instances(settings)
    assert held == {thick.uid: set(thick.instance_uids), report.uid: set(report.instance_uids)}
    assert len(RETRIEVE_SOP_CLASSES) <= 127  # and the C-GET's own context makes 128 at most

    again = archive.retrieve(ct.uid, [thick.uid], intake_sink(intake))
    assert (again.stored, again.duplicates, again.failed) == (0, 5, 0)


def test_c_get_counts_what_the_intake_refused(prior_pacs: PriorPacs, settings: Settings) -> None:
    ct = prior_pacs.data.ct
    localizer = ct.series_named("Topogram")

    def refusing(data: bytes, transfer_syntax: str) -> StoreOutcome:
        from integration.intake.outcome import Result

        return StoreOutcome(Result.OUT_OF_RESOURCES, reason="storage headroom exhausted")

    result = open_archive(prior_pacs.source("dimse"), settings).retrieve(ct.uid, [localizer.uid], refusing)
    assert (result.stored, result.failed) == (0, 1)
    assert any("storage headroom exhausted" in p for p in result.problems)


class StorageSCP:
    """A pynetdicom storage SCP under our AE title: where a C-MOVE sends, instead of the listener."""

    def __init__(self, ae_title: str) -> None:
        self.received: list[tuple[str, str]] = []
        self.port = free_port()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: Any) -> int:
        self.received.append((str(event.request.AffectedSOPInstanceUID), str(event.context.transfer_syntax)))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def test_c_move_sends_the_chosen_series_to_our_ae_title(prior_pacs: PriorPacs, settings: Settings) -> None:
    ct = prior_pacs.data.ct
    thick = ct.series_named("Chest 10mm")
    scp = StorageSCP(settings.ae_title)
    try:
        prior_pacs.register(settings.ae_title, scp.port)
        archive = open_archive(prior_pacs.source("dimse", name="pacs-move", retrieve="move"), settings)

        result = archive.retrieve(ct.uid, [thick.uid], lambda data, syntax: pytest.fail("C-MOVE uses no sink"))

        assert (result.stored, result.duplicates, result.failed, result.bytes) == (5, 0, 0, 0)
        assert {sop for sop, _ in scp.received} == set(thick.instance_uids)
    finally:
        scp.stop()
        prior_pacs.register()  # back to the fixture's entry


def test_wado_rs_streams_one_series_through_the_intake(
    prior_pacs: PriorPacs, settings: Settings, intake: InstanceIntake
) -> None:
    ct = prior_pacs.data.ct
    thin = ct.series_named("Chest 2.5mm")
    archive = open_archive(prior_pacs.source("dicomweb"), settings)
    try:
        result = archive.retrieve(ct.uid, [thin.uid], intake_sink(intake))
    finally:
        archive.close()
    assert (result.stored, result.duplicates, result.failed, result.problems) == (20, 0, 0, ())
    assert result.bytes > 20 * 64 * 64 * 2
    assert stored_instances(settings) == {thin.uid: set(thin.instance_uids)}
    syntaxes = db_rows(settings.database_url, "SELECT DISTINCT transfer_syntax_uid FROM instances")
    assert syntaxes == [("1.2.840.10008.1.2.1",)]  # as Orthanc holds them: nothing transcoded


class AuthenticatedOrthanc(OrthancServer):
    """Orthanc that asks every HTTP client for a user and password (its own start-up probe gives them)."""

    def __init__(self, user: str, password: str) -> None:
        super().__init__(
            plugins=[DICOMWEB_PLUGIN],
            extra_config={"AuthenticationEnabled": True, "RegisteredUsers": {user: password}},
        )
        import base64

        self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(self, path: str) -> Any:
        import urllib.request

        request = urllib.request.Request(self.url + path, headers={"Authorization": self.authorization})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def locked_orthanc() -> Iterator[AuthenticatedOrthanc]:
    with AuthenticatedOrthanc("pacsvlm", "s3cret-Password") as server:
        yield server


def test_basic_auth_is_sent_and_a_wrong_password_is_named(locked_orthanc: AuthenticatedOrthanc) -> None:
    url = f"{locked_orthanc.url}/dicom-web"
    good = PriorSource(name="vna", kind="dicomweb", url=url, username="pacsvlm", password="s3cret-Password")
    archive = open_archive(good, Settings())
    assert archive.find_studies(PATIENT_ID, ISSUER) == []  # let in: it just holds nothing
    archive.close()

    bad = PriorSource(name="vna", kind="dicomweb", url=url, username="pacsvlm", password="wrong-Password")
    archive = open_archive(bad, Settings())
    with pytest.raises(ArchiveError, match=r"prior source vna: QIDO-RS studies refused our credentials \(HTTP 401\)"):
        archive.find_studies(PATIENT_ID, ISSUER)
    with pytest.raises(ArchiveError) as caught:
        archive.find_series("1.2.3.4")
    assert PATIENT_ID not in str(caught.value) and "wrong-Password" not in str(caught.value)
    archive.close()


def unreachable(kind: str) -> PriorSource:
    port = free_port()  # nothing listens there
    if kind == "dimse":
        return PriorSource(name="down", kind="dimse", ae_title="PACS", host="127.0.0.1", port=port, timeout=5)
    return PriorSource(name="down", kind="dicomweb", url=f"http://127.0.0.1:{port}/dicom-web", timeout=5)


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
@pytest.mark.parametrize(
    "call",
    [
        lambda archive: archive.find_studies(PATIENT_ID, ISSUER),
        lambda archive: archive.find_series("1.2.3.4"),
        lambda archive: archive.retrieve("1.2.3.4", ["1.2.3.4.5"], lambda d, s: pytest.fail("nothing arrives")),
    ],
    ids=["studies", "series", "retrieve"],
)
def test_a_pacs_that_is_down_is_an_archive_error_at_once(kind: str, call: Callable[[PriorArchive], object]) -> None:
    archive = open_archive(unreachable(kind), Settings())
    started = time.monotonic()
    with pytest.raises(ArchiveError, match=r"prior source down.*no connection") as caught:
        call(archive)
    assert time.monotonic() - started < 3
    assert PATIENT_ID not in str(caught.value)


def test_a_pacs_that_does_not_know_our_ae_title_says_so(prior_pacs: PriorPacs) -> None:
    archive = open_archive(prior_pacs.source("dimse"), Settings(ae_title="STRANGER"))
    with pytest.raises(ArchiveError, match=r"prior source pacs .*the PACS ended the C-FIND .*'STRANGER'") as caught:
        archive.find_studies(PATIENT_ID, ISSUER)
    assert PATIENT_ID not in str(caught.value)


def test_an_empty_patient_id_is_never_sent() -> None:
    for kind in ("dimse", "dicomweb"):
        archive = open_archive(unreachable(kind), Settings())
        for patient_id in ("", "  ", "A\\B"):
            with pytest.raises(ArchiveError, match="non-empty Patient ID"):
                archive.find_studies(patient_id, None)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "local", "kind": "dimse", "ae_title": "P", "host": "h", "port": 104}, "our own store"),
        ({"name": "p", "kind": "dimse", "host": "h", "port": 104}, "needs ae_title, host and port"),
        ({"name": "p", "kind": "dimse", "ae_title": "A\\B", "host": "h", "port": 104}, "without backslash"),
        ({"name": "p", "kind": "dimse", "ae_title": "P", "host": "h", "port": 104, "url": "http://x"}, "url"),
        ({"name": "p", "kind": "dimse", "ae_title": "P", "host": "h", "port": 104, "ca_file": "/ca"}, "tls true"),
        ({"name": "p", "kind": "dicomweb", "url": "ftp://x"}, "http\\(s\\) url"),
        ({"name": "p", "kind": "dicomweb", "url": "http://x", "retrieve": "move"}, "dimse prior sources"),
        ({"name": "p", "kind": "dicomweb", "url": "https://x", "username": "u"}, "both username and password"),
        (
            {"name": "p", "kind": "dicomweb", "url": "https://x", "username": "u", "password": "p", "token": "t"},
            "not both",
        ),
        ({"name": "p", "kind": "dicomweb", "url": "http://vna.example.org", "token": "t"}, "over https only"),
        ({"name": "p", "kind": "dicomweb", "url": "http://vna", "username": "u", "password": "pw"}, "over https only"),
        ({"name": "p", "kind": "dicomweb", "url": "http://vna", "ca_file": "/ca"}, "need an https url"),
    ],
)
def test_prior_sources_are_validated(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        PriorSource.model_validate(entry)
    for secret in ("pw", "t"):
        if entry.get("password") == secret or entry.get("token") == secret:
            assert f"'{secret}'" not in str(caught.value)


def test_prior_sources_come_from_the_environment_with_unique_names(monkeypatch: pytest.MonkeyPatch) -> None:
    dimse = {"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "10.0.0.1", "port": 104, "retrieve": "move"}
    web = {"name": "vna", "kind": "dicomweb", "url": "http://127.0.0.1:8042/dicom-web", "token": "t0ken"}
    monkeypatch.setenv("PACSVLM_PRIOR_SOURCES", json.dumps([dimse, web]))
    monkeypatch.setenv("PACSVLM_PRIOR_WAIT_SECONDS", "15")
    settings = Settings()
    assert [s.name for s in settings.prior_sources] == ["pacs", "vna"]  # credentials to a loopback host over http
    assert settings.prior_sources[0].retrieve == "move" and settings.prior_wait_seconds == 15
    assert settings.prior_sources[1].token is not None and "t0ken" not in repr(settings.prior_sources[1])
    assert settings.prior_fhir_url is None and Settings().prior_sources[1].token.get_secret_value() == "t0ken"

    monkeypatch.setenv("PACSVLM_PRIOR_SOURCES", json.dumps([dimse, {**web, "name": "pacs"}]))
    with pytest.raises(ValidationError, match="prior source names must be unique: pacs"):
        Settings()


def test_the_bearer_token_and_the_ca_file_go_on_the_session(tmp_path: Path) -> None:
    from integration.priors.dicomweb import DicomwebArchive

    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a request")
    source = PriorSource(name="cloud", kind="dicomweb", url="https://dicom.example.org/v1", token="t0ken", ca_file=ca)
    archive = DicomwebArchive(source)
    assert archive._session.headers["Authorization"] == "Bearer t0ken"
    assert archive._session.verify == str(ca) and archive._session.auth is None
    archive.close()


@pytest.fixture(scope="module")
def tls_orthanc(prior_pacs: PriorPacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsOrthanc]:
    """A second Orthanc that speaks DICOM only over TLS and wants our client certificate; it holds the prior CT."""
    folder = tmp_path_factory.mktemp("tls-pacs")
    certs = make_certificates(folder / "certs")
    orthanc = OrthancServer(
        aet="TLSPACS",
        folder=folder / "orthanc",
        extra_config={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(certs.server.certificate),
            "DicomTlsPrivateKey": str(certs.server.key),
            "DicomTlsTrustedCertificates": str(certs.ca),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )
    orthanc.start()
    try:
        pacs = PriorPacs(orthanc, prior_pacs.data)
        pacs.upload(prior_pacs.data.ct.files)
        pacs.register()
        yield TlsOrthanc(pacs, certs)
    finally:
        orthanc.stop()


@dataclass(frozen=True)
class TlsOrthanc:
    pacs: PriorPacs
    certs: Certificates


def test_a_prior_is_found_and_retrieved_over_dicom_tls_with_our_client_certificate(
    tls_orthanc: TlsOrthanc, settings: Settings, intake: InstanceIntake
) -> None:
    certs, ct = tls_orthanc.certs, tls_orthanc.pacs.data.ct
    files = {"ca_file": certs.ca, "certificate": certs.client.certificate, "private_key": certs.client.key}
    archive = open_archive(tls_orthanc.pacs.source("dimse", name="pacs-tls", tls=True, **files), settings)
    try:
        found = archive.find_studies(PATIENT_ID, ISSUER)
        assert ct.uid in {study.study_uid for study in found}
        thick = ct.series_named("Chest 10mm")
        result = archive.retrieve(ct.uid, [thick.uid], intake_sink(intake))
        assert (result.stored, result.failed) == (len(thick.instance_uids), 0)
        assert stored_instances(settings) == {thick.uid: set(thick.instance_uids)}
    finally:
        archive.close()
    # Without TLS, or with a CA that did not sign the PACS's certificate, nothing is exchanged and the error says so.
    plain = open_archive(tls_orthanc.pacs.source("dimse", name="pacs-plain"), settings)
    rogue = open_archive(
        tls_orthanc.pacs.source("dimse", name="pacs-rogue", tls=True, ca_file=certs.rogue_ca), settings
    )
    for refused in (plain, rogue):
        try:
            with pytest.raises(ArchiveError, match=r"pacs-(plain|rogue)"):
                refused.find_studies(PATIENT_ID, ISSUER)
        finally:
            refused.close()
