"""The listener's admission rules on their own: slots per AE and host with a reserve, pending caps, blocks, digests.

The listener process tests (``tests/reliability/test_hostile.py``) show the same rules over sockets;
these pin the arithmetic with a fake clock.
"""

from __future__ import annotations

import pytest

from bench.hostile import maximal_request
from bench.wire import associate_rq
from integration.config import Settings
from integration.dicom import upper_layer as ul
from integration.dicom.admission import (
    AdmissionLimits,
    AssociationSlots,
    ConnectionGate,
    NegotiationBudget,
    RejectionDigest,
    Verdict,
)
from integration.dicom.negotiation import Negotiator, negotiate


def limits(**overrides: float) -> AdmissionLimits:
    values: dict[str, float] = dict(
        associations=4,
        per_ae=2,
        per_host=3,
        reserve=1,
        pending=3,
        pending_per_host=2,
        rejections_before_block=3,
        rejection_window=10.0,
        block_seconds=30.0,
    )
    values.update(overrides)
    return AdmissionLimits(**values)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limits_default_to_shares_of_max_associations() -> None:
    resolved = AdmissionLimits.from_settings(Settings(max_associations=16))
    assert (resolved.associations, resolved.per_ae, resolved.per_host, resolved.reserve) == (16, 8, 16, 2)
    small = AdmissionLimits.from_settings(Settings(max_associations=2))
    assert (small.per_ae, small.reserve) == (1, 0)
    with pytest.raises(ValueError, match="reserve"):
        limits(reserve=4)


def test_slots_per_ae_per_host_and_a_reserve_for_newcomers() -> None:
    slots = AssociationSlots(limits())
    assert slots.take("CT1", "10.0.0.1") is None
    assert slots.take("CT1", "10.0.0.1") is None
    assert "calling AE holds its limit of 2" in str(slots.take("CT1", "10.0.0.1"))
    assert slots.take("MR1", "10.0.0.1") is None  # 3 of 4 taken, the host now holds 3
    assert "host holds its limit of 3" in str(slots.take("US1", "10.0.0.1"))
    assert "reserved" in str(slots.take("MR1", "10.0.0.9"))  # MR1 already holds a slot: not a newcomer
    assert slots.take("US1", "10.0.0.2") is None  # a newcomer AE on a newcomer host takes the reserve
    assert slots.take("XA1", "10.0.0.3") == "too many concurrent associations"
    slots.release("CT1", "10.0.0.1")
    assert slots.take("XA1", "10.0.0.3") is None
    assert slots.in_use == 4 and slots.by_ae["CT1"] == 1


def test_pending_connections_are_capped_in_all_and_per_host() -> None:
    gate = ConnectionGate(limits())
    assert gate.open("10.0.0.1") == Verdict() and gate.open("10.0.0.1") == Verdict()
    assert gate.open("10.0.0.1") == Verdict("too many connections from this host waiting to associate")
    assert gate.open("10.0.0.2") == Verdict()
    assert gate.open("10.0.0.3") == Verdict("too many connections waiting to associate")
    gate.settled("10.0.0.1")
    assert gate.open("10.0.0.3") == Verdict()


def test_a_host_rejected_again_and_again_is_turned_away_for_longer_each_time() -> None:
    clock = Clock()
    gate = ConnectionGate(limits(), clock)
    assert [gate.rejected("10.6.6.6") for _ in range(3)] == [0.0, 0.0, 30.0]
    turned = "host turned away after repeated rejections"
    assert gate.open("10.6.6.6") == Verdict(turned, hold=10.0)  # held unread (counted as pending), then closed
    assert gate.open("10.6.6.6") == Verdict(turned, hold=10.0)
    assert gate.open("10.6.6.6") == Verdict(turned, hold=0.0)  # the host's pending share is used: closed at once
    assert gate.open("10.0.0.1") == Verdict()  # others are not affected
    assert gate.turned_away() == {"10.6.6.6": 3} and gate.turned_away() == {}
    gate.settled("10.6.6.6")
    gate.settled("10.6.6.6")
    clock.now += 25
    assert gate.open("10.6.6.6") == Verdict(turned, hold=5.0)  # never past the block
    gate.settled("10.6.6.6")
    clock.now += 6
    assert gate.open("10.6.6.6") == Verdict()
    assert [gate.rejected("10.6.6.6") for _ in range(3)] == [0.0, 0.0, 60.0]  # doubled
    clock.now += 61
    gate.rejected("10.7.7.7", counts=False)  # transient (busy): never counts towards a block
    assert [gate.rejected("10.7.7.7", counts=False) for _ in range(5)] == [0.0] * 5


def test_rejections_spread_over_the_window_do_not_block() -> None:
    clock = Clock()
    gate = ConnectionGate(limits(), clock)
    for _ in range(10):
        assert gate.rejected("10.0.0.5") == 0.0 or pytest.fail("blocked")
        clock.now += 6  # two per window at most


def test_negotiation_budget_lets_modalities_through_and_slows_a_loop_of_maximal_requests() -> None:
    clock = Clock()
    budget = NegotiationBudget(rate=256 * 1024, burst=2 * 1024 * 1024, clock=clock)
    assert NegotiationBudget(rate=0, burst=0).spend("10.6.6.6", 10**9) is None  # 0: no budget
    assert all(budget.spend("10.0.0.1", 30 * 1024) is None for _ in range(60))  # a burst of 60 associations
    maximal = [budget.spend("10.6.6.6", 128 * 1024) for _ in range(40)]
    assert maximal.count(None) == 16 and maximal[-1] == "too many association requests from this host"
    clock.now += 1
    assert [budget.spend("10.6.6.6", 128 * 1024) for _ in range(3)] == [
        None,
        None,
        "too many association requests from this host",
    ]
    assert budget.spend("10.0.0.2", 30 * 1024) is None  # per host


def test_digest_reports_the_first_at_once_and_repeats_once_per_window() -> None:
    clock = Clock()
    digest = RejectionDigest(lambda *report: None, window=10, clock=clock)
    assert digest.add("10.0.0.1", "X", "calling AE not in the allowlist") == (
        "10.0.0.1",
        "X",
        "calling AE not in the allowlist",
        1,
    )
    assert all(digest.add("10.0.0.1", "X", "calling AE not in the allowlist") is None for _ in range(99))
    assert digest.flush() == []  # the window is still open
    clock.now += 10
    assert digest.flush() == [("10.0.0.1", "X", "calling AE not in the allowlist", 99)]
    assert digest.add("10.0.0.1", "X", "calling AE not in the allowlist") is not None  # a new window
    digest.add("10.0.0.1", "X", "calling AE not in the allowlist")
    assert digest.flush(everything=True) == [("10.0.0.1", "X", "calling AE not in the allowlist", 1)]


def test_request_header_is_read_from_the_fixed_fields() -> None:
    pdu = associate_rq("MODALITY1", "PACSVLM")
    header = ul.parse_request_header(pdu[6 : 6 + ul.ASSOCIATE_RQ_FIXED_LENGTH])
    assert (header.protocol_version, header.called_ae, header.calling_ae) == (1, "PACSVLM", "MODALITY1")
    odd = bytearray(pdu[6:74])
    odd[20:36] = "MODÄ".encode("latin-1").ljust(16)
    assert ul.parse_request_header(bytes(odd)).calling_ae == "MOD\ufffd"  # matches no AE title


def test_negotiation_in_the_process_matches_the_thread() -> None:
    from integration.dicom.listener import acceptor_contexts

    contexts = acceptor_contexts()
    body = maximal_request("MODALITY1")[6:]
    assert len(body) > Negotiator.INLINE_LIMIT
    inline = negotiate(body, contexts, 16384)
    negotiator = Negotiator(contexts, 16384)
    try:
        first = negotiator.submit(body).result(timeout=60)  # the process is starting: negotiated in the thread
        assert first == inline
        import time

        deadline = time.monotonic() + 60
        while negotiator._process() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert negotiator._process() is not None
        assert negotiator.submit(body).result(timeout=60) == inline  # now in the process
        with pytest.raises(ul.ProtocolError, match="malformed"):
            negotiator.submit(body[:68] + b"\x20\x00\xff\xff" * 4096).result(timeout=60)
    finally:
        negotiator.close()
    assert inline.calling_ae == "MODALITY1" and len(inline.accepted) == 128
