"""The HL7 order listener over real sockets: python-hl7's MLLP client as the RIS, PostgreSQL as the store.

The client is python-hl7's blocking :class:`hl7.client.MLLPClient` (framing and ACK reading not shared with
hl7apy, whose server we run); for TLS its connected socket is wrapped in Python's ssl before the first
message (python-hl7 has no TLS option), the framing stays the client's.  The withdrawal sender
(:mod:`integration.export.corrections`) is replaced by a recorder where a cancel after drafting is tested:
what it sends is its own tests'.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.client import MLLPClient
from sqlalchemy import update

from integration.config import Settings
from integration.orders.mllp import OrderListener
from integration.samples import write_ct_series
from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.tables import Study
from integration.store.users import create_site
from tests.orders.samples import order_message, unframe
from tests.reports.test_signing import add_report, evidence_of, store_study
from tests.support.certificates import Certificates, make_certificates
from tests.support.peers import ListenerProcess
from tests.support.records import db_rows
from tests.support.services import free_port, wait_for_port

SENDERS = {"RIS^NORTH": {}, "FENCED_RIS": {"hosts": ["10.9.9.9"]}}


def make_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "min_free_bytes": 0,
        "mllp_port": free_port(),
        "mllp_host": "127.0.0.1",
        "hl7_senders": SENDERS,
        "mllp_timeout": 10.0,
    }
    return Settings(**(values | overrides))


@pytest.fixture
def settings(migrated_postgres_url: str, tmp_path: Path) -> Settings:
    return make_settings(migrated_postgres_url, tmp_path)


@pytest.fixture
def listener(settings: Settings) -> Iterator[OrderListener]:
    started = OrderListener(settings).start()
    yield started
    started.stop()


@pytest.fixture
def client(listener: OrderListener) -> Iterator[MLLPClient]:
    with MLLPClient("127.0.0.1", listener.port) as connected:
        connected.socket.settimeout(30)
        yield connected


def send(client: MLLPClient, message: str | bytes) -> hl7.Message:
    return hl7.parse(unframe(client.send_message(message)))


def msa(ack: hl7.Message) -> tuple[str, str, str]:
    return ack.extract_field("MSA", 1, 1), ack.extract_field("MSA", 1, 2), ack.extract_field("MSA", 1, 3)


def err_code(ack: hl7.Message) -> str:
    return str(ack.extract_field("ERR", 1, 3, 1, 1))


def orders(settings: Settings) -> list[tuple[Any, ...]]:
    sql = "SELECT id, accession_number, patient_id, status, priority, indication, updated_at FROM orders ORDER BY id"
    return db_rows(settings.database_url, sql)


def counts(settings: Settings) -> tuple[int, int, int]:
    (row,) = db_rows(
        settings.database_url,
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_events), "
        "(SELECT count(*) FROM inbound_messages)",
    )
    return row[0], row[1], row[2]


def test_a_new_order_is_acknowledged_and_stored(settings: Settings, client: MLLPClient) -> None:
    ack = send(client, order_message(priority="S", control_id="N-1"))
    assert msa(ack) == ("AA", "N-1", "order created")
    assert [ack.extract_field("MSH", 1, n) for n in (3, 4, 5, 6)] == ["PACSVLM", "PACS", "RIS", "NORTH"]
    (row,) = db_rows(
        settings.database_url,
        "SELECT accession_number, patient_id, issuer_of_patient_id, priority, indication, modality, source, sender,"
        " status, procedure_code FROM orders",
    )
    assert row == ("ACC0001", "PAT001", "HOSP", "stat", "Chest pain, rule out PE", "CT", "hl7", "RIS^NORTH",
                   "scheduled", "CTCHEST")  # fmt: skip
    inbound = "SELECT sender, control_id, message_type, ack_code FROM inbound_messages"
    assert db_rows(settings.database_url, inbound) == [("RIS^NORTH", "N-1", "ORM^O01", "AA")]


def test_the_same_control_id_gets_the_same_ack_and_changes_nothing(settings: Settings, client: MLLPClient) -> None:
    first = send(client, order_message(control_id="DUP-1"))
    before = orders(settings)
    # Sent again (with other content, as a buggy RIS might): answered as the first time, nothing applied.
    again = send(client, order_message("XO", control_id="DUP-1", priority="S", indication="^other"))
    assert msa(again) == msa(first) == ("AA", "DUP-1", "order created")
    assert orders(settings) == before
    assert counts(settings) == (1, 1, 1)
    # Another sender's message with the same control id is another message.
    assert msa(send(client, order_message("XO", control_id="DUP-1", facility="SOUTH")))[0] == "AR"  # not allowed


def test_same_control_id_on_two_connections_at_once(settings: Settings, listener: OrderListener) -> None:
    answers: list[tuple[str, str, str]] = []
    barrier = threading.Barrier(4)

    def one() -> None:
        with MLLPClient("127.0.0.1", listener.port) as connected:
            barrier.wait()
            answers.append(msa(send(connected, order_message(control_id="RACE-1"))))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [("AA", "RACE-1", "order created")] * 4
    assert counts(settings) == (1, 1, 1)


def test_change_cancel_and_discontinue(settings: Settings, client: MLLPClient) -> None:
    assert msa(send(client, order_message(control_id="C-1")))[0] == "AA"
    assert msa(send(client, order_message("XO", control_id="C-2", priority="S"))) == ("AA", "C-2", "order changed")
    assert orders(settings)[0][4] == "stat"
    assert msa(send(client, order_message("CA", control_id="C-3"))) == ("AA", "C-3", "order cancelled")
    assert orders(settings)[0][3] == "cancelled"
    ack = send(client, order_message("XO", control_id="C-4"))
    assert msa(ack) == ("AE", "C-4", "XO for an order that is cancelled")
    assert err_code(ack) == "206"
    assert msa(send(client, order_message("NW", control_id="D-1", accession="ACC0002")))[0] == "AA"
    assert msa(send(client, order_message("DC", control_id="D-2", accession="ACC0002")))[2] == "order discontinued"
    assert [row[3] for row in orders(settings)] == ["cancelled", "discontinued"]


def test_cancel_of_an_unknown_order_is_an_application_error(settings: Settings, client: MLLPClient) -> None:
    ack = send(client, order_message("CA", control_id="U-1", accession="NOPE"))
    assert msa(ack) == ("AE", "U-1", "CA for an order we do not hold")
    assert err_code(ack) == "204"
    assert ack.extract_field("ERR", 1, 4) == "E"
    assert counts(settings) == (0, 0, 1)
    again = send(client, order_message("CA", control_id="U-1", accession="NOPE"))  # remembered with its code
    assert (msa(again), err_code(again)) == (msa(ack), "204")


def test_missing_accession_is_an_application_error(settings: Settings, client: MLLPClient) -> None:
    ack = send(client, order_message(control_id="A-1", accession="", version="2.3.1"))
    assert msa(ack) == ("AE", "A-1", "the order has no accession number (OBR-18)")
    assert ack.extract_field("MSA", 1, 6, 1, 1) == "101"  # v2.3.1: the code in MSA-6 and ERR-1
    assert counts(settings)[0] == 0


def test_senders_not_allowed_are_rejected(settings: Settings, client: MLLPClient) -> None:
    ack = send(client, order_message(application="ROGUE", control_id="R-1"))
    assert msa(ack) == ("AR", "R-1", "sender (MSH-3/MSH-4) is not allowed to send orders")
    ack = send(client, order_message(application="FENCED_RIS", facility="ANY", control_id="R-2"))
    assert msa(ack) == ("AR", "R-2", "sender (MSH-3/MSH-4) is not allowed from this address")
    assert counts(settings) == (0, 0, 0)


def test_site_of_the_sender(migrated_postgres_url: str, tmp_path: Path) -> None:
    with session_scope(migrated_postgres_url) as session:
        create_site(session, "NORTH", "North Hospital")
    senders = {"RIS^NORTH": {"site": "NORTH"}, "RIS^EAST": {"site": "EAST"}}
    settings = make_settings(migrated_postgres_url, tmp_path, hl7_senders=senders)
    listener = OrderListener(settings).start()
    try:
        with MLLPClient("127.0.0.1", listener.port) as connected:
            assert msa(send(connected, order_message(control_id="S-1")))[0] == "AA"
            ack = send(connected, order_message(control_id="S-2", facility="EAST", accession="ACC0009"))
            assert msa(ack) == ("AR", "S-2", "the sender's site is not configured here")
    finally:
        listener.stop()
    north = db_rows(migrated_postgres_url, "SELECT id FROM sites WHERE code = 'NORTH'")[0][0]
    assert db_rows(migrated_postgres_url, "SELECT site_id FROM orders") == [(north,)]


def ten_megabytes() -> str:
    return order_message(control_id="BIG-1") + "\rNTE|1||" + "x" * (10 * 1024 * 1024)


@pytest.mark.parametrize(
    ("name", "message", "code", "error", "says"),
    [
        ("segment order", "swap", "AR", "100", "segment PID is out of order or not allowed here"),
        ("no MSH-10", order_message(control_id=""), "AR", "101", "MSH-10 (message control id) is missing"),
        ("encoding characters", order_message().replace("^~\\&", "^~\\", 1), "AR", "102",
         "bad encoding characters in MSH-1/MSH-2 (expected |^~\\&)"),
        ("10 MB", "big", "AR", "207", "message larger than 1048576 bytes"),
        ("undeclared charset", order_message(patient_name="MÜLLER").encode("latin-1"), "AR", "102",
         "undeclared character set: non-ASCII bytes without MSH-18"),
        ("unsupported type", order_message(kind="ADT^A08"), "AR", "200",
         "message type ADT^A08 is not supported (ORM^O01, OMI^O23)"),
    ],
)  # fmt: skip
def test_bad_input_is_answered_and_loses_nothing(
    settings: Settings, client: MLLPClient, name: str, message: str | bytes, code: str, error: str, says: str
) -> None:
    assert msa(send(client, order_message(control_id="KEEP-1", priority="S")))[0] == "AA"
    before, before_counts = orders(settings), counts(settings)
    if message == "swap":
        lines = order_message(control_id="BAD-1").split("\r")
        message = "\r".join([lines[0], lines[3], lines[1], lines[2], lines[4]])
    elif message == "big":
        message = ten_megabytes()
        client.socket.settimeout(None)  # python-hl7 sends with one send(): whole only on a blocking socket
    ack = send(client, message)
    assert (ack.extract_field("MSA", 1, 1), ack.extract_field("MSA", 1, 3)) == (code, says), name
    assert ack.extract_field("ERR", 1, 3, 1, 1) == error
    assert ack.extract_field("ERR", 1, 8) == says
    assert orders(settings) == before
    assert counts(settings) == before_counts
    # The connection goes on: the next message is taken.
    assert msa(send(client, order_message("XO", control_id="NEXT-1", indication="^after")))[0] == "AA"


def test_utf8_without_a_declared_charset_is_taken(settings: Settings, client: MLLPClient) -> None:
    ack = send(client, order_message(control_id="U8-1", indication="^Schmerz über dem Knöchel"))
    assert msa(ack)[0] == "AA"
    assert orders(settings)[0][5] == "Schmerz über dem Knöchel"
    latin = order_message(control_id="L1-1", charset="8859/1", indication="^Hämatom", accession="ACC0003")
    ack = hl7.parse(client.send_message(latin.encode("latin-1"))[1:-2].decode("latin-1"))
    assert (msa(ack)[0], ack.extract_field("MSH", 1, 18)) == ("AA", "8859/1")
    assert orders(settings)[1][5] == "Hämatom"


def test_many_messages_over_one_connection(settings: Settings, client: MLLPClient) -> None:
    for n in range(50):
        assert msa(send(client, order_message(control_id=f"M-{n}", accession=f"ACC{n:04d}")))[0] == "AA"
    assert counts(settings) == (50, 50, 50)


def test_every_version_and_omi(settings: Settings, client: MLLPClient) -> None:
    for n, version in enumerate(["2.3", "2.3.1", "2.4", "2.5", "2.5.1"]):
        ack = send(client, order_message(version=version, control_id=f"V-{n}", accession=f"ACCV{n}"))
        assert (msa(ack)[0], ack.extract_field("MSH", 1, 12)) == ("AA", version)
    ack = send(client, order_message(kind="OMI^O23^OMI_O23", control_id="O-1", accession="ACC-OMI", priority="S"))
    assert msa(ack)[0] == "AA"
    assert db_rows(settings.database_url, "SELECT priority FROM orders WHERE accession_number = 'ACC-OMI'") == [
        ("stat",)
    ]


def test_cancel_after_drafting_withdraws_the_draft(
    settings: Settings, client: MLLPClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 2, rows=16, columns=16))
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Study).where(Study.id == study_id).values(accession_number="ACC0001", patient_id="PAT001")
        )
    report_id = add_report(settings, study_id, evidence_of(headers))
    calls: list[tuple[list[int], str]] = []

    def failing(_settings: Settings, ids: list[int], reason: str) -> list[int]:
        calls.append((list(ids), reason))
        raise RuntimeError("receiver down")

    monkeypatch.setattr("integration.export.corrections.withdraw_reports", failing)
    assert msa(send(client, order_message(control_id="W-1")))[0] == "AA"
    with caplog.at_level(logging.ERROR, logger="integration.orders.mllp"):
        ack = send(client, order_message("CA", control_id="W-2"))
    assert msa(ack) == ("AA", "W-2", "order cancelled")  # the failed withdrawal is logged, not a NAK
    assert calls == [([report_id], "order cancelled by the RIS")]
    assert "withdrawing reports" in caplog.text
    assert db_rows(settings.database_url, "SELECT status FROM reports WHERE id = :id", id=report_id) == [("withdrawn",)]
    assert "PAT001" not in caplog.text and "ACC0001" not in caplog.text


def test_stop_closes_idle_connections(settings: Settings) -> None:
    listener = OrderListener(settings).start()
    connected = MLLPClient("127.0.0.1", listener.port)
    connected.socket.settimeout(10)
    assert msa(send(connected, order_message(control_id="I-1")))[0] == "AA"
    started = time.monotonic()
    listener.stop()
    assert time.monotonic() - started < 5
    assert connected.socket.recv(10) == b""  # closed by the listener
    connected.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("mllp-tls"))


def tls_client(port: int, certs: Certificates, with_certificate: bool = True) -> MLLPClient:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if with_certificate:
        context.load_cert_chain(certs.client.certificate, certs.client.key)
    connected = MLLPClient("127.0.0.1", port)
    connected.socket.settimeout(10)
    connected.socket = context.wrap_socket(connected.socket, server_hostname="localhost")
    return connected


def test_tls_with_client_certificates(migrated_postgres_url: str, tmp_path: Path, certs: Certificates) -> None:
    settings = make_settings(
        migrated_postgres_url,
        tmp_path,
        mllp_tls_certificate=certs.server.certificate,
        mllp_tls_private_key=certs.server.key,
        mllp_tls_ca_certificates=certs.ca,
    )
    listener = OrderListener(settings).start()
    try:
        with tls_client(listener.port, certs) as connected:
            assert connected.socket.version() in ("TLSv1.2", "TLSv1.3")
            assert msa(send(connected, order_message(control_id="T-1")))[0] == "AA"
            assert msa(send(connected, order_message("XO", control_id="T-2", priority="S")))[0] == "AA"
        # Without a client certificate: no TLS session, no answer, nothing stored.
        with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout)):
            refused = tls_client(listener.port, certs, with_certificate=False)
            refused.send_message(order_message(control_id="T-3"))
            assert refused.socket.recv(10) == b""
            raise ConnectionError("closed")
        # Plain TCP on the TLS port: the handshake fails, nothing is stored.
        with MLLPClient("127.0.0.1", listener.port) as plain:
            plain.socket.settimeout(10)
            try:
                answer = plain.send_message(order_message(control_id="T-4"))
            except ConnectionResetError:
                answer = b""
            assert answer == b""
    finally:
        listener.stop()
    assert counts(settings) == (1, 2, 2)


def test_pacs_vlm_listen_takes_orders(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str
) -> None:
    mllp_port = free_port()
    env = {
        "PACSVLM_MLLP_PORT": str(mllp_port),
        "PACSVLM_MLLP_HOST": "127.0.0.1",
        "PACSVLM_HL7_SENDERS": json.dumps(SENDERS),
    }
    process = listener_factory(migrated_postgres_url, redis_url, extra_env=env)
    wait_for_port("127.0.0.1", mllp_port, timeout=30)
    with MLLPClient("127.0.0.1", mllp_port) as connected:
        connected.socket.settimeout(30)
        assert msa(send(connected, order_message(control_id="CLI-1"))) == ("AA", "CLI-1", "order created")
    assert db_rows(migrated_postgres_url, "SELECT accession_number FROM orders") == [("ACC0001",)]
    assert f"listening for HL7 orders on 127.0.0.1:{mllp_port}" in process.log()
    process.stop()
    assert "PAT001" not in process.log()


def test_a_refused_order_undoes_the_others_of_its_message(settings: Settings, client: MLLPClient) -> None:
    text = order_message(control_id="TWO-1", accession="ACC0005")
    text += "\rORC|CA|PL9\r" + "OBR|2|PL9" + "|" * 16 + "NOPE"
    ack = send(client, text)
    assert msa(ack) == ("AE", "TWO-1", "CA for an order we do not hold")
    assert counts(settings) == (0, 0, 1)


def test_frames_in_pieces_pipelined_and_idle_connections(migrated_postgres_url: str, tmp_path: Path) -> None:
    """Framing edges no library client produces on demand, so a plain socket writes the bytes here."""
    settings = make_settings(migrated_postgres_url, tmp_path, mllp_timeout=1.0)
    listener = OrderListener(settings).start()
    try:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw:
            first = b"\x0b" + order_message(control_id="P-1").encode() + b"\x1c"
            for piece in (first[:5], first[5:40], first[40:], b"\r"):  # the end block split from its CR
                raw.sendall(piece)
                time.sleep(0.05)
            second = b"\x0b" + order_message("XO", control_id="P-2").encode() + b"\x1c\r"
            third = b"\x0b" + order_message("XO", control_id="P-3", priority="S").encode() + b"\x1c\r"
            raw.sendall(second + b"\r\n" + third)  # two messages in one write, a line end between them
            answers = b""
            while answers.count(b"\x1c\r") < 3:
                answers += raw.recv(4096)
            acks = [hl7.parse(frame.strip(b"\x0b").decode()) for frame in answers.split(b"\x1c\r")[:3]]
            assert [msa(ack)[:2] for ack in acks] == [("AA", "P-1"), ("AA", "P-2"), ("AA", "P-3")]
            started = time.monotonic()
            assert raw.recv(10) == b""  # idle past mllp_timeout: closed by the listener
            assert time.monotonic() - started < 5
    finally:
        listener.stop()
    assert orders(settings)[0][4] == "stat"


def test_embedded_sqlite_with_eight_connections(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pacs-vlm.sqlite'}"
    upgrade(url)
    settings = make_settings(url, tmp_path)
    listener = OrderListener(settings).start()
    answers: list[str] = []

    def some(k: int) -> None:
        with MLLPClient("127.0.0.1", listener.port) as connected:
            for n in range(10):
                ack = send(connected, order_message(control_id=f"E-{k}-{n}", accession=f"E{k}-{n}"))
                answers.append(msa(ack)[0])

    try:
        threads = [threading.Thread(target=some, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        listener.stop()
    assert answers == ["AA"] * 80
    assert counts(settings) == (80, 80, 80)
