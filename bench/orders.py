"""Orders over MLLP: how fast the order listener acknowledges a RIS's ORM^O01 messages.

A RIS sends orders one at a time per connection and waits for each ACK before the next (HL7's original
mode), so what matters is the ACK latency: the listener parses the message, applies the order in one
database transaction (the row, its history, the remembered ACK for idempotency, study matching) and commits
before it answers AA.  ``--orders`` new orders are sent over one MLLP connection, then as many again over
``--connections`` connections at once (python-hl7's MLLP client, a different implementation from our
listener's hl7apy server).  Every message must be answered AA.  The listener runs in a process of its own (as
in ``pacs-vlm listen``), so the clients do not share its interpreter; on this 2-core machine they, the listener
and PostgreSQL still share the CPUs.

The database is a temporary SQLite file, or, with ``--database-url`` / ``PACSVLM_DATABASE_URL`` naming a
PostgreSQL server, a fresh database created on that server and dropped after the run (the goal is stated
for PostgreSQL: p99 under 50 ms).

The last line is ``orders acked=<n>/<n> p99_ms=<v>`` (the worst p99 of the runs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
from hl7.client import MLLPClient
from rich.console import Console
from rich.table import Table

from bench.priors import Databases
from integration.config import Settings
from integration.orders.mllp import OrderListener

SENDER = "BENCH_RIS^BENCH_HOSP"
#: Seconds a client waits for one ACK before the message counts as not acknowledged.
ACK_TIMEOUT = 10.0
P99_GOAL_MS = 50.0
#: MLLP's end block (PS: HL7 v2 minimal lower layer protocol): file separator, carriage return.
END_BLOCK = b"\x1c\r"


class BenchError(RuntimeError):
    """The benchmark could not run (the reason is printed without a traceback)."""


@dataclass(frozen=True)
class Run:
    """One run: its connections, messages sent and acknowledged AA, wall time and per-message ACK latencies."""

    connections: int
    sent: int
    acked: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        """Messages acknowledged per second."""
        return self.acked / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        """The ACK latency below which ``fraction`` of the messages were answered (ms)."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def order_message(run: str, index: int) -> str:
    """Return one new order (ORM^O01, v2.5.1, IHE SWF field use: accession in OBR-18), segments split by CR."""
    control_id = f"{run}-{index:06d}"
    accession = f"{run}{index:06d}"[-16:]
    msh = f"MSH|^~\\&|BENCH_RIS|BENCH_HOSP|PACSVLM|PACSVLM|20261205120000||ORM^O01^ORM_O01|{control_id}|P|2.5.1"
    pid = f"PID|1||P{run}{index:06d}^^^HOSP^MR||BENCH^PATIENT||19700101|F"
    priority = "S" if index % 10 == 0 else "R"
    orc = f"ORC|NW|PL{control_id}|FL{control_id}||SC||^^^^^{priority}||20261205120000|||1234^SMITH^JOHN"
    obr = ["OBR", "1", f"PL{control_id}", f"FL{control_id}", "71046^XR CHEST 2 VIEWS^C4"] + [""] * 27
    obr[16] = "1234^SMITH^JOHN"
    obr[18] = accession
    obr[24] = "CR"
    obr[31] = "^cough and fever for two weeks"
    return "\r".join((msh, pid, "PV1|1|O", orc, "|".join(obr)))


def _send_all(port: int, messages: list[str], latencies: list[float], acked: list[int], errors: list[str]) -> None:
    try:
        client = MLLPClient("127.0.0.1", port)
    except OSError as exc:
        errors.append(f"cannot connect: {exc}")
        return
    client.socket.settimeout(ACK_TIMEOUT)
    client.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for message in messages:
            started = time.perf_counter()
            try:
                answer = client.send_message(message)
                while not answer.endswith(END_BLOCK):  # python-hl7 reads once; an ACK may come in pieces
                    more = client.socket.recv(65536)
                    if not more:
                        raise ConnectionError("closed before the whole ACK")
                    answer += more
            except OSError as exc:
                errors.append(f"no ACK: {type(exc).__name__}")
                return
            latencies.append((time.perf_counter() - started) * 1000)
            msa = hl7.parse(answer.decode("utf-8", errors="replace").strip("\x0b\x1c\r\n")).segment("MSA")
            if str(msa[1]) == "AA":
                acked.append(1)
            elif len(errors) < 5:
                errors.append(f"MSA-1 {msa[1]}: {msa[3] if len(msa) > 3 else ''}")
    finally:
        client.close()


def measure(port: int, run: str, count: int, connections: int) -> Run:
    """Send ``count`` new orders over ``connections`` connections at once; return what came back."""
    messages = [order_message(run, index) for index in range(count)]
    shares = [messages[k::connections] for k in range(connections)]
    latencies: list[list[float]] = [[] for _ in shares]
    acked: list[int] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_send_all, args=(port, share, latencies[k], acked, errors), daemon=True)
        for k, share in enumerate(shares)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for error in errors[:5]:
        print(f"  {run}: {error}", file=sys.stderr)
    return Run(connections, count, len(acked), seconds, [value for part in latencies for value in part])


def report(runs: Sequence[Run], database: str, console: Console) -> None:
    """Print the table and the summary line."""
    table = Table(title="ORM^O01 over MLLP: every message answered before the next on its connection")
    for column in ("connections", "orders", "acked AA", "messages/s", "ACK p50 ms", "ACK p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            str(run.connections),
            str(run.sent),
            str(run.acked),
            f"{run.rate:.0f}",
            f"{run.percentile(0.50):.1f}",
            f"{run.percentile(0.99):.1f}",
            f"{max(run.latencies_ms, default=float('nan')):.1f}",
        )
    console.print(table)
    mean = statistics.fmean(run.rate for run in runs)
    console.print(f"database: {database}; goal: every message AA, p99 under {P99_GOAL_MS:.0f} ms; mean {mean:.0f}/s")
    acked, sent = sum(run.acked for run in runs), sum(run.sent for run in runs)
    worst = max(run.percentile(0.99) for run in runs)
    print(f"orders acked={acked}/{sent} p99_ms={worst:.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.orders", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=1000, help="orders per run (default 1000)")
    parser.add_argument("--connections", type=int, default=8, help="connections of the second run (default 8)")
    parser.add_argument("--quick", action="store_true", help="100 orders per run (the test suite's size)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PACSVLM_DATABASE_URL"),
        help="a PostgreSQL URL: a fresh database is created on its server and dropped after (default: SQLite)",
    )
    args = parser.parse_args(argv)
    count = 100 if args.quick else args.orders
    if count < 1 or args.connections < 1:
        parser.error("--orders and --connections must be at least 1")
    databases = Databases(args.database_url)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="bench-orders-") as scratch:
        folder = Path(scratch)
        url = databases.create(folder)
        settings = Settings(
            data_dir=folder,
            database_url=url,
            mllp_host="127.0.0.1",
            mllp_port=_free_port(),
            hl7_senders={SENDER: {}},
        )
        context = multiprocessing.get_context("spawn")
        stop, ready = context.Event(), context.Event()
        server = context.Process(target=serve, args=(settings.model_dump(mode="json"), ready, stop), daemon=True)
        server.start()
        try:
            if not ready.wait(60):
                raise BenchError("the order listener did not start within 60 s")
            port = int(settings.mllp_port or 0)
            runs = [measure(port, "S", count, 1), measure(port, "M", count, args.connections)]
        finally:
            stop.set()
            server.join(30)
            databases.drop(url)
    report(runs, databases.kind, console)
    if any(run.acked != run.sent for run in runs):
        raise SystemExit(1)


def serve(settings: dict[str, Any], ready: Any, stop: Any) -> None:
    """Run the order listener in its own process (as ``pacs-vlm listen`` does) until ``stop`` is set."""
    listener = OrderListener(Settings(**settings))
    listener.start()
    ready.set()
    try:
        stop.wait()
    finally:
        listener.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        print(f"bench.orders: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
