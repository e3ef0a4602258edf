"""Hostile peers on the DICOM port: what an unauthenticated peer can take is bounded, legitimate senders go on.

One real ``pacs-vlm listen`` process (PostgreSQL, Redis) serves the module; attacks come over raw
sockets from their own loopback addresses (127.0.0.x), so what a host is refused does not touch the
legitimate sender on 127.0.0.1.  Memory bounds are the listener's RSS read from ``/proc``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.hostile import (
    REQUEST_LIMIT,
    attack_loop,
    command_set_bomb,
    connect,
    cpu_seconds,
    deflated_instance,
    empty_fragment_flood,
    hold_half_sent_requests,
    large_instance,
    legit_stores,
    maximal_request,
    open_idle_connections,
    peak_rss_mib,
    reset_peak_rss,
    send_large,
    still_open,
)
from bench.wire import ABORT_RQ, CT_IMAGE_STORAGE, EXPLICIT_LE, associate_rq, read_answer
from integration.intake.header import file_meta_bytes
from integration.store.migrate import upgrade
from tests.support.peers import ListenerProcess, wait_until
from tests.support.records import db_rows
from tests.support.services import Postgres, RedisServer

#: A Redis index of its own: the per-test ``redis_url`` fixture flushes the tests' shared one.
HOSTILE_REDIS_DB = 14
ASSOCIATE_RJ, ABORT = 0x03, 0x07


@pytest.fixture(scope="module")
def hostile_listener(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, redis_server: RedisServer
) -> Iterator[ListenerProcess]:
    """One listener for the module (production configuration), on its own database and Redis index."""
    database_url = postgres.create_database()
    upgrade(database_url)
    listener = ListenerProcess(
        data_dir=tmp_path_factory.mktemp("hostile"),
        database_url=database_url,
        broker_url=redis_server.url(HOSTILE_REDIS_DB),
        calling_aes={"FUZZER": {}, "STORESCU": {}, "MODALITY": {}},
        stable_seconds=3600,
        extra_env={"PACSVLM_ACSE_TIMEOUT": "3", "PACSVLM_NETWORK_TIMEOUT": "5"},
    ).start()
    yield listener
    listener.stop()


def pid_of(listener: ListenerProcess) -> int:
    assert listener.process is not None and listener.process.poll() is None, listener.log()[-3000:]
    return listener.process.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def answer_to(port: int, source: str, payload: bytes) -> tuple[int | None, bytes]:
    """Send raw bytes; return the answer's PDU type and its first 4 body bytes (the RJ/abort fields)."""
    with connect(port, source) as sock:
        sock.sendall(payload)
        sock.settimeout(10)
        header = sock.recv(6)
        if len(header) < 6:
            return 0, b""
        return header[0], sock.recv(4)


def test_request_is_judged_on_its_fixed_fields_before_it_is_decoded(hostile_listener: ListenerProcess) -> None:
    port = hostile_listener.port
    valid = associate_rq("FUZZER")
    garbage = bytes([0x20, 0, 0xFF, 0xFF]) * ((REQUEST_LIMIT - 68) // 4)  # items no decoder accepts
    unknown = bytearray(valid[:74] + garbage)
    unknown[26:42] = b"INTRUDER".ljust(16)
    unknown[2:6] = (len(unknown) - 6).to_bytes(4, "big")
    # Refused for its calling AE (diagnostic 3), not aborted as malformed: the items were never decoded.
    pdu_type, fields = answer_to(port, "127.0.0.10", bytes(unknown))
    assert (pdu_type, fields[1], fields[3]) == (ASSOCIATE_RJ, 1, 3)
    allowed = bytearray(valid[:74] + garbage)
    allowed[2:6] = (len(allowed) - 6).to_bytes(4, "big")
    assert answer_to(port, "127.0.0.10", bytes(allowed))[0] == ABORT  # an allowed AE's garbage is decoded
    over = bytearray(valid[:6]) + bytes(8)
    over[2:6] = (REQUEST_LIMIT + 1).to_bytes(4, "big")
    assert answer_to(port, "127.0.0.10", bytes(over))[0] == ABORT  # over the limit: not even read


def test_flood_of_maximal_requests_costs_no_decoding_and_its_host_is_turned_away(
    hostile_listener: ListenerProcess,
) -> None:
    pid, port = pid_of(hostile_listener), hostile_listener.port
    request = maximal_request("INTRUDER")
    assert len(request) > 100 * 1024
    # the listener's own loops (study assembly, prior searches, the purge loop) poll the database meanwhile:
    # their rate, measured idle just before, is taken off so the flood's own cost is what is bounded
    idle_before = cpu_seconds(pid)
    time.sleep(4.0)
    idle_rate = (cpu_seconds(pid) - idle_before) / 4.0
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    answers = attack_loop(port, "INTRUDER", 12.0, source="127.0.0.11")
    cpu = cpu_seconds(pid) - cpu_before - idle_rate * (time.monotonic() - started)
    # 20 rejections (PACSVLM_REJECTIONS_BEFORE_BLOCK) from the fixed fields alone, then the host is turned
    # away: its next connection is held unread and closed, so the loop waits instead of spinning.
    assert answers["A-ASSOCIATE-RJ"] == 20, answers
    assert set(answers) <= {"A-ASSOCIATE-RJ", "timeout", "closed", "refused"} and len(answers) >= 2, answers
    assert sum(answers.values()) < 30, answers
    # pynetdicom decodes one such request in ~50 ms; refusing one from its fixed fields costs far less.
    assert cpu < 1.0, f"listener used {cpu:.1f} s of CPU above its idle {idle_rate:.2f} s/s for {answers}"
    assert legit_stores(port, 5, "FUZZER")  # another host is not affected
    rows = lambda: db_rows(  # noqa: E731
        hostile_listener.database_url,
        "SELECT detail->>'reason', (detail->>'count')::int FROM audit_events "
        "WHERE action = 'dicom.association.rejected' AND source = '127.0.0.11'",
    )

    def rejected_by_ae() -> int:
        return sum(count for reason, count in rows() if reason == "calling AE not in the allowlist")

    wait_until(lambda: rejected_by_ae() == 20, timeout=40, message="digest of the rejections")
    reasons = [reason for reason, _ in rows()]
    assert any("host turned away for 30 s" in str(reason) for reason in reasons), reasons
    assert len(reasons) <= 5, reasons  # the first, the repeats, the block, the turned away: never one per request


def test_half_sent_requests_and_idle_connections_hold_little(hostile_listener: ListenerProcess) -> None:
    pid, port = pid_of(hostile_listener), hostile_listener.port
    before = rss_mib(pid)
    held = hold_half_sent_requests(port, "127.0.0.12", 300)
    idle = open_idle_connections(port, "127.0.0.13", 500)
    try:
        assert still_open(held) <= 16 and still_open(idle) <= 16  # PACSVLM_MAX_PENDING_PER_HOST
        grown = rss_mib(pid) - before
        assert grown < 32, f"listener RSS grew by {grown:.0f} MiB"  # 300 x 100 KiB would be 30 MiB alone
        assert legit_stores(port, 3, "FUZZER")
    finally:
        for sock in held + idle:
            sock.close()


def test_one_ae_cannot_take_every_slot_and_a_newcomer_gets_the_reserve(
    tmp_path: Path, migrated_postgres_url: str, redis_url: str
) -> None:
    listener = ListenerProcess(
        data_dir=tmp_path / "slots",
        database_url=migrated_postgres_url,
        broker_url=redis_url,
        calling_aes={"FUZZER": {}, "STORESCU": {}, "MODALITY": {}},
        extra_env={"PACSVLM_MAX_ASSOCIATIONS": "4", "PACSVLM_RESERVED_ASSOCIATIONS": "1"},
    ).start()
    held: list[socket.socket] = []

    def associate(calling_ae: str, source: str) -> int | None:
        sock = connect(listener.port, source)
        sock.sendall(associate_rq(calling_ae))
        answer = read_answer(sock, 10)
        if answer.pdu_type == 0x02:
            held.append(sock)
        else:
            sock.close()
        return answer.pdu_type

    try:
        # FUZZER keeps C-ECHO-like idle associations open: it gets half the slots, not all of them.
        assert [associate("FUZZER", "127.0.0.1") for _ in range(3)] == [0x02, 0x02, ASSOCIATE_RJ]
        assert associate("STORESCU", "127.0.0.1") == 0x02  # another AE: 3 of 4 taken
        assert associate("STORESCU", "127.0.0.1") == ASSOCIATE_RJ  # the last slot is the reserve
        assert associate("MODALITY", "127.0.0.20") == 0x02  # a newcomer (AE and host) takes it
        log = listener.log()
        assert "calling AE holds its limit of 2 concurrent associations" in log
        assert "remaining slots are reserved for other senders" in log
        for sock in held[:2]:
            sock.sendall(ABORT_RQ)
            sock.close()
        wait_until(lambda: associate("FUZZER", "127.0.0.1") == 0x02, timeout=10, message="freed slot")
    finally:
        for sock in held:
            sock.close()
        listener.stop()


def test_command_set_bomb_is_aborted_early(hostile_listener: ListenerProcess) -> None:
    pid = pid_of(hostile_listener)
    before = rss_mib(pid)
    answer = command_set_bomb(hostile_listener.port, 64)
    assert answer.label in ("A-ABORT", "closed"), answer.label
    assert "command set larger than 65536 bytes" in hostile_listener.log()
    assert rss_mib(pid) - before < 16


def test_empty_data_fragments_do_not_grow_memory(hostile_listener: ListenerProcess) -> None:
    pid = pid_of(hostile_listener)
    reset_peak_rss(pid)
    before = peak_rss_mib(pid)
    # 16 MiB of 6-byte items: 2.8 million fragments, which used to cost ~200 bytes each in memory.
    answer = empty_fragment_flood(hostile_listener.port, 16)
    assert answer.status == 0xC000, answer.label  # an empty data set cannot be understood
    grown = peak_rss_mib(pid) - before
    assert grown < 24, f"listener peak RSS grew by {grown:.0f} MiB"


def test_large_instance_is_spooled_to_its_file_not_held_twice(hostile_listener: ListenerProcess) -> None:
    pid = pid_of(hostile_listener)
    data, sop_uid, study_uid = large_instance(96)
    reset_peak_rss(pid)
    before = peak_rss_mib(pid)
    answer = send_large(hostile_listener.port, data, sop_uid)
    assert answer.status == 0x0000, answer.label
    grown = peak_rss_mib(pid) - before
    assert grown < 40, f"a 96 MiB instance raised the listener's peak RSS by {grown:.0f} MiB"  # was ~192
    stored = next(hostile_listener.instance_root.glob(f"{study_uid}/*/{sop_uid}.dcm"))
    assert stored.read_bytes() == file_meta_bytes(CT_IMAGE_STORAGE, sop_uid, EXPLICIT_LE, "FUZZER") + data
    assert hostile_listener.partial_files() == []


def test_a_highly_deflated_instance_is_inflated_to_disk_not_memory(hostile_listener: ListenerProcess) -> None:
    pid = pid_of(hostile_listener)
    deflated, sop_uid, study_uid = deflated_instance(160)
    assert 40 < 160 * 2**20 / len(deflated) < 64  # a ratio the listener accepts (up to 64)
    reset_peak_rss(pid)
    before = peak_rss_mib(pid)
    answer = send_large(hostile_listener.port, deflated, sop_uid, context_id=3)
    assert answer.status == 0x0000, answer.label
    grown = peak_rss_mib(pid) - before
    assert grown < 40, f"inflating 160 MiB raised the listener's peak RSS by {grown:.0f} MiB"  # was ~320
    stored = next(hostile_listener.instance_root.glob(f"{study_uid}/*/{sop_uid}.dcm"))
    assert stored.read_bytes().endswith(deflated)  # stored as received, deflated


def test_a_legitimate_sender_keeps_its_pace_under_a_request_flood(hostile_listener: ListenerProcess) -> None:
    """A functional check (timing targets live in ``bench.hostile``): every C-STORE succeeds under attack."""
    port = hostile_listener.port
    attack = threading.Thread(target=attack_loop, args=(port, "STORESCU", 6.0, "127.0.0.14"), daemon=True)
    attack.start()
    time.sleep(0.5)
    done = legit_stores(port, 30, "FUZZER")
    attack.join(timeout=30)
    assert len(done) == 30
