"""HL7 ORU over MLLP to a real RIS endpoint: hl7apy's MLLP server (tests.support.ris), not our sender's library.

The RIS answers AA, AE (its text must reach ``deliveries.last_error``), nothing at all (the attempt times out
and is retried), or an ACK for another message.  The delivery worker runs as a subprocess against PostgreSQL
and Redis; the document is the real ORU the delivery task builds from a stored report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from integration.config import Settings
from integration.destinations import Destination
from integration.export.documents import load_document
from integration.export.mllp import clean_reason, read_ack
from integration.export.outbox import queue_deliveries
from integration.export.outgoing import DeliveryFailed, OutgoingDocument
from integration.export.senders import send
from integration.store.deliveries import DeliveryTarget
from tests.export.test_delivery import delivery_env, states, stored_report
from tests.support.certificates import Certificates, make_certificates
from tests.support.peers import WorkerProcess, wait_until
from tests.support.records import db_rows
from tests.support.ris import REFUSAL_DETAIL, REFUSAL_TEXT, Ris, ris_tls_context
from tests.support.services import free_port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def ris_destination(port: int, **overrides: object) -> Destination:
    fields: dict[str, object] = {
        "name": "ris",
        "kind": "mllp",
        "host": "127.0.0.1",
        "port": port,
        "timeout": 1.5,
        "reports": "both",
    }
    return Destination.model_validate({**fields, **overrides})


@pytest.fixture
def oru(migrated_postgres_url: str, tmp_path: Path) -> OutgoingDocument:
    """The ORU^R01 of a stored draft report, as the delivery task builds it for an mllp destination."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=migrated_postgres_url,
        destinations=[{"name": "ris", "kind": "mllp", "host": "127.0.0.1", "port": 2575, "reports": "both"}],
    )
    report_id = stored_report(settings)
    target = DeliveryTarget(0, report_id, None, f"draft:{report_id}", "ris", "hl7", 1)
    document = load_document(settings, target)
    assert document.kind == "hl7" and document.content.startswith(b"MSH|^~\\&|")
    return document


def control_id(document: OutgoingDocument) -> str:
    return document.content.split(b"\r", 1)[0].decode().split("|")[9]


def test_aa_delivers_and_the_ris_gets_our_message_unchanged(oru: OutgoingDocument) -> None:
    with Ris(["AA"]) as ris:
        assert send(ris_destination(ris.port), oru, calling_ae="PACSVLM") == "ACK AA"
    [received] = ris.received
    assert received.er7.encode().rstrip(b"\r") == oru.content.rstrip(b"\r")
    assert received.control_id == control_id(oru) and received.er7.split("\r")[0].split("|")[8] == "ORU^R01^ORU_R01"


def test_ae_and_ar_fail_with_the_riss_own_words(oru: OutgoingDocument) -> None:
    with Ris(["AE", "AR"]) as ris:
        destination = ris_destination(ris.port)
        with pytest.raises(
            DeliveryFailed, match=rf"^the RIS answered AE: {REFUSAL_TEXT.replace('(', '.').replace(')', '.')}$"
        ):
            send(destination, oru, calling_ae="PACSVLM")
        with pytest.raises(DeliveryFailed, match=r"^the RIS answered AR: Unknown patient"):
            send(destination, oru, calling_ae="PACSVLM")
    assert [r.control_id for r in ris.received] == [control_id(oru)] * 2  # a resend is the same message


def test_no_ack_within_the_timeout_fails_the_attempt(oru: OutgoingDocument) -> None:
    with Ris(["silent"], silence_seconds=3) as ris:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed, match=rf"^no ACK from 127\.0\.0\.1:{ris.port} within 1\.5s$"):
            send(ris_destination(ris.port), oru, calling_ae="PACSVLM")
        assert 1.4 < time.monotonic() - started < 2.9  # the destination's timeout, not the RIS's silence
    assert len(ris.received) == 1


def test_an_ack_for_another_message_is_not_ours(oru: OutgoingDocument) -> None:
    with Ris(["wrong-id"]) as ris, pytest.raises(DeliveryFailed, match="acknowledged message 'SOMEONE-ELSE', not ours"):
        send(ris_destination(ris.port), oru, calling_ae="PACSVLM")


def test_no_ris_listening_fails_the_attempt(oru: OutgoingDocument) -> None:
    port = free_port()
    with pytest.raises(DeliveryFailed, match=rf"^MLLP connection to 127\.0\.0\.1:{port}: ConnectionRefusedError$"):
        send(ris_destination(port), oru, calling_ae="PACSVLM")


def test_ack_reasons_are_cleaned_and_capped() -> None:
    header = "MSH|^~\\&|RIS|H|PACSVLM||20260101||ACK|1|P|2.5.1\r"
    ack = f"{header}MSA|AE|C1|bad\x07 \\T\\ value\x1b[31m {'x' * 400}".encode()
    with pytest.raises(DeliveryFailed) as refused:
        read_ack(b"\x0b" + ack + b"\x1c\r", "C1")
    text = str(refused.value)
    assert text.startswith("the RIS answered AE: bad & value [31m x") and text.endswith("...")
    assert not any(ord(c) < 32 for c in text) and len(text) < 250
    v23 = f"{header}MSA|AR|C1\rERR|OBR^1^4^207&Unknown procedure code&HL70357".encode()  # v2.3 ERR-1 (ELD)
    with pytest.raises(DeliveryFailed, match=r"^the RIS answered AR: Unknown procedure code$"):
        read_ack(v23, "C1")
    with pytest.raises(DeliveryFailed, match="not an HL7 ACK"):
        read_ack(b"\x0bHTTP/1.1 400 Bad Request\r\n\x1c\r", "C1")
    assert clean_reason("a\r\nb\tc") == "a b c"


def test_over_tls_with_our_client_certificate(oru: OutgoingDocument, certs: Certificates) -> None:
    context = ris_tls_context(certs.server.certificate, certs.server.key, certs.ca)
    with Ris(["AA"], tls=context) as ris:
        tls = {
            "tls": True,
            "ca_file": certs.ca,
            "certificate": certs.client.certificate,
            "private_key": certs.client.key,
        }
        assert send(ris_destination(ris.port, **tls), oru, calling_ae="PACSVLM") == "ACK AA"
        with pytest.raises(
            DeliveryFailed, match=r"^TLS handshake with 127\.0\.0\.1:\d+ failed: CERTIFICATE_VERIFY_FAILED"
        ):
            send(ris_destination(ris.port, **{**tls, "ca_file": certs.rogue_ca}), oru, calling_ae="PACSVLM")
    assert len(ris.received) == 1


def test_through_the_delivery_worker_no_ack_then_ae_is_dead_letter_then_a_retry_is_acked(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    with Ris(["silent", "AE", "AA"], silence_seconds=3) as ris:
        destinations: list[dict[str, object]] = [
            {"name": "ris", "kind": "mllp", "host": "127.0.0.1", "port": ris.port, "timeout": 1.5, "reports": "both",
             "receiving_application": "RADRIS"},
        ]  # fmt: skip
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=migrated_postgres_url,
            broker_url=redis_url,
            destinations=destinations,
        )
        report_id = stored_report(settings)
        env = delivery_env(settings, destinations) | {"PACSVLM_DELIVERY_MAX_ATTEMPTS": "2"}
        worker = worker_factory(
            settings.data_dir, migrated_postgres_url, redis_url, None, queues="delivery", extra_env=env
        )
        assert len(queue_deliveries(settings, report_id, None, "draft")) == 1
        wait_until(
            lambda: states(migrated_postgres_url) == {"ris/hl7": ("dead_letter", 2)},
            timeout=90,
            message=f"no ACK, then AE: dead letter {states(migrated_postgres_url)}\n{worker.log()[-3000:]}",
        )
        [(error,)] = db_rows(migrated_postgres_url, "SELECT last_error FROM deliveries")
        assert error == f"the RIS answered AE: {REFUSAL_TEXT}"
        assert "no ACK from 127.0.0.1" in worker.log()  # the first attempt's reason, logged when it was retried
        worker.retry_dead_letters()
        wait_until(
            lambda: states(migrated_postgres_url) == {"ris/hl7": ("delivered", 1)},
            timeout=60,
            message=f"AA after the retry: {states(migrated_postgres_url)}\n{worker.log()[-3000:]}",
        )
    assert [r.behaviour for r in ris.received] == ["silent", "AE", "AA"]
    assert len({r.control_id for r in ris.received}) == 1  # the same message each time: the RIS can tell a resend
    assert ris.received[0].er7.split("|")[4] == "RADRIS"  # MSH-5 from the destination
    actions = [a for (a,) in db_rows(migrated_postgres_url, "SELECT action FROM audit_events ORDER BY id")]
    assert [a for a in actions if a.startswith("export.")] == [
        "export.failed",
        "export.dead_letter",
        "export.delivered",
    ]
    audit = " ".join(str(d) for (d,) in db_rows(migrated_postgres_url, "SELECT detail FROM audit_events"))
    assert REFUSAL_TEXT not in audit and REFUSAL_DETAIL not in audit  # the RIS's words stay in last_error
