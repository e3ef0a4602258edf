"""Who may hold the listener's resources: connections, association slots, and a rejected host's patience.

Anyone who reaches the DICOM port can open TCP connections and send association
requests, so every resource an unauthenticated peer can take is bounded here,
before any expensive work: connections not yet associated (globally and per
host), association slots (per calling AE and per host, with a reserve that only
a newcomer may take, so one modality cannot starve the others), and hosts that
keep getting rejected, which are turned away at accept for a while.  Rejections
are logged and audited once per (host, calling AE, reason) and window, with a
count, so a flood of them cannot flood the audit or the log.

Everything here runs on the listener's event-loop thread: no locks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Final

from integration.config import Settings
from integration.dicom import upper_layer as ul
from integration.dicom.negotiation import Negotiated, Negotiator
from integration.dicom.peer import Peer, Rejection

log = logging.getLogger(__name__)

#: Seconds over which repeated rejections of one (host, calling AE, reason) make one audit event.
AUDIT_WINDOW_SECONDS: Final = 10.0
#: Longest a blocked host's connection is held unread before it is closed (a loop of them waits, not spins).
HOLD_SECONDS: Final = 10.0
#: Association request bytes one host may have negotiated in one burst, in seconds of its budget
#: (``PACSVLM_ASSOCIATION_REQUEST_BUDGET``, 256 KiB/s by default: modalities send 1-40 KiB per association,
#: so that is hundreds of associations a minute, while a loop of maximal 128 KiB requests gets two a second).
NEGOTIATION_BURST_SECONDS: Final = 8


@dataclass(frozen=True)
class Verdict:
    """What happens to a new connection: ``refusal`` None to serve it; else closed after ``hold`` seconds."""

    refusal: str | None = None
    hold: float = 0.0


@dataclass(frozen=True)
class AdmissionLimits:
    """The listener's admission limits, resolved from the settings.

    Attributes
    ----------
    associations : int
        Associations at once, in all.
    per_ae, per_host : int
        Associations one calling AE, or one host, may hold at once.
    reserve : int
        Slots kept for an AE and host that hold none yet.
    pending, pending_per_host : int
        Connections not yet associated (TLS handshake, waiting for or reading the request).
    rejections_before_block : int
        Rejections of one host within ``rejection_window`` seconds after which it is turned away at accept.
    rejection_window, block_seconds : float
        That window, and how long the host is turned away (doubling while it keeps trying, up to 32x).
    request_budget : int
        Association request bytes per second one host may have negotiated (0: unlimited).
    """

    associations: int
    per_ae: int
    per_host: int
    reserve: int
    pending: int
    pending_per_host: int
    rejections_before_block: int
    rejection_window: float
    block_seconds: float
    request_budget: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionLimits:
        """Resolve the limits from the settings (defaults relative to ``max_associations``)."""
        total = settings.max_associations
        return cls(
            associations=total,
            per_ae=settings.max_associations_per_ae or max(1, (total + 1) // 2),
            per_host=settings.max_associations_per_host or total,
            reserve=min(settings.reserved_associations, total // 4),
            pending=settings.max_pending_connections,
            pending_per_host=settings.max_pending_per_host,
            rejections_before_block=settings.rejections_before_block,
            rejection_window=settings.rejection_window,
            block_seconds=settings.rejected_host_block,
            request_budget=settings.association_request_budget,
        )

    def __post_init__(self) -> None:
        if min(self.associations, self.per_ae, self.per_host, self.pending, self.pending_per_host) < 1:
            raise ValueError("association and connection limits must be at least 1")
        if not 0 <= self.reserve < self.associations:
            raise ValueError("the reserve must leave at least one ordinary slot")


class AssociationSlots:
    """Association slots by calling AE and host, with a reserve for newcomers.

    Parameters
    ----------
    limits : AdmissionLimits
        The limits.
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.in_use = 0
        self.by_ae: Counter[str] = Counter()
        self.by_host: Counter[str] = Counter()

    def take(self, calling_ae: str, host: str) -> str | None:
        """Take a slot for ``calling_ae`` at ``host``; return why not, or None when taken."""
        limits = self.limits
        if self.in_use >= limits.associations:
            return "too many concurrent associations"
        if self.by_ae[calling_ae] >= limits.per_ae:
            return f"calling AE holds its limit of {limits.per_ae} concurrent associations"
        if self.by_host[host] >= limits.per_host:
            return f"host holds its limit of {limits.per_host} concurrent associations"
        newcomer = not self.by_ae[calling_ae] and not self.by_host[host]
        if not newcomer and limits.associations - self.in_use <= limits.reserve:
            return "too many concurrent associations (the remaining slots are reserved for other senders)"
        self.in_use += 1
        self.by_ae[calling_ae] += 1
        self.by_host[host] += 1
        return None

    def release(self, calling_ae: str, host: str) -> None:
        """Give back a slot taken by :meth:`take`."""
        self.in_use -= 1
        self.by_ae[calling_ae] -= 1
        self.by_host[host] -= 1
        if not self.by_ae[calling_ae]:
            del self.by_ae[calling_ae]
        if not self.by_host[host]:
            del self.by_host[host]


@dataclass
class _HostRecord:
    rejections: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    strikes: int = 0
    turned_away: int = 0


class ConnectionGate:
    """Connections before association: caps on pending ones, and hosts turned away after many rejections.

    Parameters
    ----------
    limits : AdmissionLimits
        The limits.
    clock : callable
        Monotonic seconds (a parameter for tests).
    """

    def __init__(self, limits: AdmissionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.pending = 0
        self.pending_by_host: Counter[str] = Counter()
        self._hosts: dict[str, _HostRecord] = {}

    def open(self, host: str) -> Verdict:
        """Count a new connection from ``host`` as pending (or held); say whether to serve it.

        A blocked host's connection is held unread for a while (counted as pending, so a host cannot
        hold more than its share) before it is closed: a loop of requests then waits instead of spinning.
        """
        record = self._hosts.get(host)
        now = self.clock()
        room = self.pending < self.limits.pending and self.pending_by_host[host] < self.limits.pending_per_host
        if record is not None and record.blocked_until > now:
            record.turned_away += 1
            hold = min(record.blocked_until - now, HOLD_SECONDS) if room else 0.0
            if hold:
                self.pending += 1
                self.pending_by_host[host] += 1
            return Verdict("host turned away after repeated rejections", hold)
        if self.pending >= self.limits.pending:
            return Verdict("too many connections waiting to associate")
        if not room:
            return Verdict("too many connections from this host waiting to associate")
        self.pending += 1
        self.pending_by_host[host] += 1
        return Verdict()

    def settled(self, host: str) -> None:
        """The pending connection from ``host`` associated or ended."""
        self.pending -= 1
        self.pending_by_host[host] -= 1
        if not self.pending_by_host[host]:
            del self.pending_by_host[host]

    def rejected(self, host: str, *, counts: bool = True) -> float:
        """Note a rejection of ``host``; return the seconds it is now turned away for (0 when not).

        ``counts=False`` (a transient refusal: every slot taken) does not move a host towards a block.
        """
        if not counts:
            return 0.0
        limits, now = self.limits, self.clock()
        record = self._hosts.setdefault(host, _HostRecord())
        record.rejections.append(now)
        while record.rejections and record.rejections[0] < now - limits.rejection_window:
            record.rejections.popleft()
        if len(record.rejections) < limits.rejections_before_block:
            self._forget_idle(now)
            return 0.0
        record.strikes = min(record.strikes + 1, 6)
        seconds = float(limits.block_seconds * 2 ** (record.strikes - 1))
        record.blocked_until = now + seconds
        record.rejections.clear()
        return seconds

    def turned_away(self) -> dict[str, int]:
        """Return and reset the connections turned away per blocked host since the last call."""
        counts = {host: r.turned_away for host, r in self._hosts.items() if r.turned_away}
        for host in counts:
            self._hosts[host].turned_away = 0
        return counts

    def _forget_idle(self, now: float) -> None:
        """Drop records of hosts neither blocked nor recently rejected (bounds the table)."""
        if len(self._hosts) < 4096:
            return
        horizon = now - self.limits.rejection_window
        for host in [h for h, r in self._hosts.items() if r.blocked_until < now and not r.rejections]:
            del self._hosts[host]
        for host in [h for h, r in self._hosts.items() if r.rejections and r.rejections[-1] < horizon]:
            del self._hosts[host]


class NegotiationBudget:
    """Association request bytes each host may have negotiated: a token bucket per host.

    Parameters
    ----------
    rate, burst : float
        Bytes per second, and the bucket's size.
    clock : callable
        Monotonic seconds.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def spend(self, host: str, size: int) -> str | None:
        """Take ``size`` bytes from ``host``'s bucket; return why not (the bucket is short), or None."""
        if not self.rate:
            return None
        now = self.clock()
        tokens, since = self._buckets.get(host, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * self.rate)
        if tokens < size:
            self._buckets[host] = (tokens, now)
            return "too many association requests from this host"
        if len(self._buckets) >= 4096:  # forget full buckets (idle hosts)
            full = [h for h, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
            for idle in full:
                del self._buckets[idle]
        self._buckets[host] = (tokens - size, now)
        return None


@dataclass
class _Pending:
    first_seen: float
    count: int = 0


class RejectionDigest:
    """Rejections as one log line and audit event per (host, calling AE, reason) and window, with a count.

    The first rejection of a key is reported at once; those that follow within the window are counted
    and reported together by :meth:`flush`, which the listener calls periodically and at stop.

    Parameters
    ----------
    report : callable
        ``report(host, calling_ae, reason, count)``: log and audit (runs on a worker thread).
    window : float
        Seconds a key's repeats are gathered before they are reported.
    clock : callable
        Monotonic seconds.
    """

    def __init__(
        self,
        report: Callable[[str, str, str, int], None],
        window: float = AUDIT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report = report
        self.window = window
        self.clock = clock
        self._pending: dict[tuple[str, str, str], _Pending] = {}

    def add(self, host: str, calling_ae: str, reason: str) -> tuple[str, str, str, int] | None:
        """Count a rejection; return the report to make now (the key's first in its window), or None."""
        key = (host, calling_ae, reason)
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= 10_000:  # a sweep of forged AE titles: fold them into one key
                key = (host, "*", reason)
                pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _Pending(self.clock())
                return (*key, 1)
        pending.count += 1
        return None

    def flush(self, *, everything: bool = False) -> list[tuple[str, str, str, int]]:
        """Return the gathered repeats whose window ended (all with ``everything``), forgetting them."""
        now = self.clock()
        due = [k for k, p in self._pending.items() if everything or now - p.first_seen >= self.window]
        reports = []
        for key in due:
            pending = self._pending.pop(key)
            if pending.count:
                reports.append((*key, pending.count))
        return reports


class ListenerAdmission:
    """The listener's gatekeeper: slots, pending connections, rejected hosts, digested reports, decoding.

    Implements :class:`~integration.dicom.peer.Gatekeeper` for every association of one listener.

    Parameters
    ----------
    limits : AdmissionLimits
        The limits.
    report : callable
        ``report(host, calling_ae, reason, count)``: logs and audits a rejection (blocking; run on a worker
        thread).  ``reason`` names the cause without patient data.
    run_blocking : callable
        Runs a blocking callable off the event loop.
    negotiator : Negotiator
        Decodes and negotiates association requests in its own process.
    """

    def __init__(
        self,
        limits: AdmissionLimits,
        report: Callable[[str, str, str, int], None],
        run_blocking: Callable[..., Awaitable[Any]],
        negotiator: Negotiator,
    ) -> None:
        self.slots = AssociationSlots(limits)
        self.gate = ConnectionGate(limits)
        self.budget = NegotiationBudget(limits.request_budget, limits.request_budget * NEGOTIATION_BURST_SECONDS)
        self.digest = RejectionDigest(report)
        self.report = report
        self.run_blocking = run_blocking
        self.negotiator = negotiator

    def open(self, host: str) -> Verdict:
        """Admit a new connection as pending, or say how it is refused."""
        return self.gate.open(host)

    def spend(self, host: str, size: int) -> str | None:
        """Charge an association request's size to its host; return why it is refused, or None."""
        return self.budget.spend(host, size)

    def take_slot(self, calling_ae: str, host: str) -> str | None:
        """Take an association slot; return why none is free, or None."""
        return self.slots.take(calling_ae, host)

    def release_slot(self, calling_ae: str, host: str) -> None:
        """Give a slot back."""
        self.slots.release(calling_ae, host)

    def settled(self, host: str) -> None:
        """The connection is no longer waiting to associate."""
        self.gate.settled(host)

    def rejected(self, peer: Peer, rejection: Rejection) -> None:
        """Count a refused association; report the first of its kind now and the rest by :meth:`flush`."""
        transient = rejection.result == ul.REJECTED_TRANSIENT
        blocked_for = self.gate.rejected(peer.address, counts=rejection.abusive or not transient)
        first = self.digest.add(peer.address, peer.calling_ae, rejection.reason)
        if first is not None:
            self._report(*first)
        if blocked_for:
            reason = f"host turned away for {blocked_for:.0f} s after repeated rejections"
            self._report(peer.address, peer.calling_ae, reason, 1)

    def flush(self, *, everything: bool = False) -> None:
        """Report the rejections gathered since their first report, and connections turned away."""
        for report in self.digest.flush(everything=everything):
            self._report(*report)
        for host, count in self.gate.turned_away().items():
            self._report(host, "", "connections turned away while the host is blocked", count)

    async def negotiate(self, body: bytes) -> Negotiated:
        """Decode and negotiate a request in the negotiation process.

        Raises
        ------
        ProtocolError
            The request cannot be decoded, or the negotiation process died (a new one takes the next).
        """
        try:
            return await asyncio.wrap_future(self.negotiator.submit(body))
        except BrokenProcessPool:  # the process died with this request in it; the next one starts anew
            self.negotiator.restart()
            raise ul.ProtocolError("the association could not be negotiated", ul.ABORT_NOT_SPECIFIED) from None

    def close(self) -> None:
        """Stop the negotiation process."""
        self.negotiator.close()

    def _report(self, host: str, calling_ae: str, reason: str, count: int) -> None:
        self.run_blocking(self.report, host, calling_ae, reason, count)
