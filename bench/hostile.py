"""Hostile peers against the listener: a legitimate sender's latency under attack, and memory under abuse.

Anyone who reaches the DICOM port can send association requests, hold connections half-open, and send
command sets and PDV items that no modality would.  This benchmark starts ``pacs-vlm listen`` (on the
machine's PostgreSQL and Redis, as ``bench.load`` does) and measures, on one association of a
legitimate sender (``127.0.0.1``) storing CT instances:

* its C-STORE p50 unloaded, and while one attacker loop (another process, from ``127.0.0.2``) sends
  maximal association requests as fast as it can: with an AE title that is not allowed (the attack the
  listener turns away from the request's fixed fields) and with an allowed AE title (each request
  decoded and negotiated, then aborted);
* the listener's peak RSS (``VmHWM``) through half-sent requests, idle connections, a command set bomb,
  a flood of empty PDV items and a large instance.

It prints a table and, last::

    hostile legit_p50_ratio=<worst loaded p50 / unloaded p50> listener_peak_mib=<peak RSS>

The functions that attack are also used by ``tests/reliability/test_hostile.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.wire import (
    ABORT_RQ,
    RELEASE_RQ,
    Answer,
    ct_instance,
    open_association,
    p_data,
    pdv,
    read_answer,
    store_command,
)

#: Our A-ASSOCIATE-RQ limit (:data:`integration.dicom.upper_layer.MAX_ASSOCIATE_RQ_LENGTH`).
REQUEST_LIMIT = 128 * 1024
LEGIT_SOURCE = "127.0.0.1"
ATTACK_SOURCE = "127.0.0.2"


def connect(port: int, source: str, timeout: float = 10.0) -> socket.socket:
    """Open a TCP connection to the listener from a loopback ``source`` address."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@functools.lru_cache(maxsize=8)
def maximal_request(calling_ae: str, called_ae: str = "PACSVLM", limit: int = REQUEST_LIMIT) -> bytes:
    """Encode a well-formed A-ASSOCIATE-RQ as large as ``limit`` allows: 128 contexts, many transfer syntaxes.

    Parameters
    ----------
    calling_ae, called_ae : str
        AE titles.
    limit : int
        Largest variable field.

    Returns
    -------
    bytes
        The PDU.
    """
    from pydicom.uid import AllTransferSyntaxes
    from pynetdicom import AllStoragePresentationContexts, build_context, pdu
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    def encode(syntaxes: int) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title, primitive.called_ae_title = calling_ae, called_ae
        names = [str(uid) for uid in AllTransferSyntaxes[:syntaxes]]
        contexts = []
        for index, context in enumerate(AllStoragePresentationContexts[:128]):
            proposed = build_context(str(context.abstract_syntax), names)
            proposed.context_id = 2 * index + 1
            contexts.append(proposed)
        primitive.presentation_context_definition_list = contexts
        length = MaximumLengthNotification()
        length.maximum_length_received = 16384
        primitive.user_information = [length]
        request = pdu.A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        return bytes(request.encode())

    syntaxes, best = 1, encode(1)
    while syntaxes < len(AllTransferSyntaxes):
        candidate = encode(syntaxes + 1)
        if len(candidate) - 6 > limit:
            break
        syntaxes, best = syntaxes + 1, candidate
    return best


def request_once(port: int, request: bytes, source: str, timeout: float = 10.0) -> str:
    """Send one association request; return what came back (``A-ASSOCIATE-AC`` is aborted at once)."""
    try:
        with connect(port, source, timeout) as sock:
            sock.sendall(request)
            answer = read_answer(sock, timeout)
            if answer.pdu_type == 0x02:
                with contextlib.suppress(OSError):
                    sock.sendall(ABORT_RQ)
            return answer.label
    except OSError:
        return "refused"


def attack_loop(
    port: int, calling_ae: str, seconds: float, source: str = ATTACK_SOURCE, results: Counter[str] | None = None
) -> Counter[str]:
    """Send maximal association requests from ``source`` back to back for ``seconds``."""
    request = maximal_request(calling_ae)
    answers: Counter[str] = results if results is not None else Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers[request_once(port, request, source)] += 1
    return answers


def _attack_process(
    port: int, calling_ae: str, seconds: float, source: str, queue: multiprocessing.Queue[dict[str, int]]
) -> None:
    queue.put(dict(attack_loop(port, calling_ae, seconds, source)))


@contextlib.contextmanager
def attacker(port: int, calling_ae: str, seconds: float, source: str = ATTACK_SOURCE) -> Iterator[dict[str, int]]:
    """Run :func:`attack_loop` in another process for the ``with`` block; the dict gets its answer counts."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[dict[str, int]] = context.Queue()
    process = context.Process(target=_attack_process, args=(port, calling_ae, seconds, source, queue), daemon=True)
    process.start()
    answers: dict[str, int] = {}
    try:
        time.sleep(1.0)  # let it reach its pace
        yield answers
    finally:
        with contextlib.suppress(Exception):
            answers.update(queue.get(timeout=seconds + 30))
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def legit_stores(port: int, count: int, calling_ae: str) -> list[float]:
    """Store ``count`` fresh CT instances on one association; return each C-STORE's seconds.

    Raises
    ------
    RuntimeError
        When a C-STORE is not answered with success.
    """
    sock = open_association(port, 30, calling_ae)
    seconds = []
    try:
        for _ in range(count):
            data, sop_uid = ct_instance()
            began = time.perf_counter()
            sock.sendall(
                p_data(pdv(1, store_command(sop_uid), command=True, last=True))
                + p_data(pdv(1, data, command=False, last=True))
            )
            answer = read_answer(sock, 30)
            seconds.append(time.perf_counter() - began)
            if answer.status != 0:
                raise RuntimeError(f"legitimate C-STORE answered {answer.label}")
        sock.sendall(RELEASE_RQ)
        read_answer(sock, 10)
    finally:
        sock.close()
    return seconds


def hold_half_sent_requests(port: int, source: str, count: int, sent: int = 100 * 1024) -> list[socket.socket]:
    """Open ``count`` connections that each send ``sent`` bytes of a maximal request and then stall."""
    request = maximal_request("FUZZER")
    held = []
    for _ in range(count):
        try:
            sock = connect(port, source)
            sock.sendall(request[:sent])
        except OSError:
            continue
        held.append(sock)
    return held


def open_idle_connections(port: int, source: str, count: int) -> list[socket.socket]:
    """Open ``count`` connections that send nothing."""
    held = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            held.append(connect(port, source))
    return held


def still_open(sockets: Sequence[socket.socket], wait: float = 1.0) -> int:
    """How many connections the listener has neither closed nor answered (an A-ABORT ends one) after ``wait`` s."""
    time.sleep(wait)
    alive = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def command_set_bomb(port: int, megabytes: int, calling_ae: str = "FUZZER") -> Answer:
    """Send an endless command set (16 KiB fragments, never the last) up to ``megabytes``; return the answer."""
    sock = open_association(port, 30, calling_ae)
    fragment = p_data(pdv(1, bytes(16384), command=True, last=False))
    with sock:
        try:
            for _ in range(megabytes * 64):
                sock.sendall(fragment)
        except OSError:
            pass  # aborted while we sent
        return read_answer(sock, 30)


def empty_fragment_flood(port: int, megabytes: int, calling_ae: str = "FUZZER") -> Answer:
    """After a C-STORE command, send ``megabytes`` of empty data PDV items, then a last one; return the answer."""
    _, sop_uid = ct_instance()
    sock = open_association(port, 30, calling_ae)
    empty = pdv(1, b"", command=False, last=False)
    pdu = p_data(*([empty] * (100_000 // len(empty))))
    with sock:
        try:
            sock.sendall(p_data(pdv(1, store_command(sop_uid), command=True, last=True)))
            for _ in range(megabytes * 1024 * 1024 // len(pdu)):
                sock.sendall(pdu)
            sock.sendall(p_data(pdv(1, b"", command=False, last=True)))
        except OSError:
            pass
        return read_answer(sock, 60)


def large_instance(megabytes: int) -> tuple[bytes, str, str]:
    """A CT instance whose pixel data is ``megabytes`` MiB; return (data set bytes, SOP Instance UID, study UID)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import generate_uid

    from integration.samples import pydicom_test_file

    dataset = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    side = int((megabytes * 1024 * 1024 // 2) ** 0.5)
    dataset.Rows = dataset.Columns = side
    dataset.PixelData = bytes(side * side * 2)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return buffer.getvalue(), str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID)


def deflated_instance(megabytes: int) -> tuple[bytes, str, str]:
    """A :func:`large_instance` whose pixel data deflates about 50 times, deflated (for the Deflated context 3)."""
    import random
    import zlib

    data, sop_uid, study_uid = large_instance(megabytes)
    pixel_start = data.rfind(b"\xe0\x7f\x10\x00OW") + 12  # the value of Pixel Data (explicit VR, long form)
    pixel_end = pixel_start + int.from_bytes(data[pixel_start - 4 : pixel_start], "little")
    noise = random.Random(7).randbytes(2**20)
    block = bytearray(2**20)
    for offset in range(0, len(block), 1024):
        block[offset : offset + 14] = noise[offset : offset + 14]  # 14 random bytes per KiB: deflates ~50x
    body = bytearray(data)
    for start in range(pixel_start, pixel_end, len(block)):
        end = min(start + len(block), pixel_end)
        body[start:end] = block[: end - start]
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(bytes(body)) + compressor.flush(), sop_uid, study_uid


def send_large(port: int, data: bytes, sop_uid: str, calling_ae: str = "FUZZER", context_id: int = 1) -> Answer:
    """Store one data set in 128 KiB PDUs on a fresh association; return the answer."""
    sock = open_association(port, 60, calling_ae)
    step = 131072 - 6
    with sock:
        sock.sendall(p_data(pdv(context_id, store_command(sop_uid), command=True, last=True)))
        for start in range(0, len(data), step):
            last = start + step >= len(data)
            sock.sendall(p_data(pdv(context_id, data[start : start + step], command=False, last=last)))
        answer = read_answer(sock, 120)
        with contextlib.suppress(OSError):
            sock.sendall(RELEASE_RQ)
            read_answer(sock, 10)
        return answer


def peak_rss_mib(pid: int) -> float:
    """Peak RSS (``VmHWM``) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss(pid: int) -> None:
    """Reset a process's ``VmHWM`` to its current RSS (Linux ``clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the table."""

    case: str
    detail: str
    value: str


def main(argv: Sequence[str] | None = None) -> int:
    """Run the attacks against a fresh listener; print the table and the summary line.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments.

    Returns
    -------
    int
        0 when the legitimate sender stayed within 2x and the listener survived, else 1.
    """
    from rich.table import Table

    from bench.ingest import BenchError, console, free_port, progress_console
    from bench.load import CALLING_AE, Deployment, percentile

    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile",
        description="Attack the listener as a hostile peer would; print a table and, last, "
        "'hostile legit_p50_ratio=<v> listener_peak_mib=<v>'.",
    )
    parser.add_argument("--instances", type=int, default=200, help="legitimate C-STOREs per case (default 200)")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/12", help="Redis database to use (flushed)")
    parser.add_argument("--database-url", help="an existing migrated database (default: a new one on 127.0.0.1:5432)")
    parser.add_argument("--large-mib", type=int, default=256, help="size of the large instance (default 256 MiB)")
    args = parser.parse_args(argv)
    if args.instances < 10:
        parser.error("--instances must be at least 10")
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="pacsvlm-hostile-") as tmp,
        Deployment(Path(tmp), args.broker_url, args.database_url) as deploy,
    ):
        try:
            listener = deploy.start_listener({"PACSVLM_STABLE_SECONDS": "3600"})
        except BenchError as exc:
            progress_console.print(f"[red]hostile failed to start:[/red] {exc}", markup=True, highlight=False)
            return 1
        assert listener.process is not None
        pid, port = listener.process.pid, deploy.dicom_port
        legit_stores(port, 20, "FUZZER")  # warm up
        duration = max(10.0, args.instances * 0.2)
        unloaded = percentile(legit_stores(port, args.instances, "FUZZER"), 0.5)
        rows.append(Row("legitimate sender, unloaded", f"{args.instances} C-STOREs", f"p50 {unloaded * 1000:.1f} ms"))
        ratios = []
        attacks = (("AE not allowed", "INTRUDER", ATTACK_SOURCE), ("allowed AE", CALLING_AE, "127.0.0.5"))
        for label, calling_ae, source in attacks:
            with attacker(port, calling_ae, duration, source) as answers:
                cpu_before = cpu_seconds(pid)
                loaded = percentile(legit_stores(port, args.instances, "FUZZER"), 0.5)
                cpu = cpu_seconds(pid) - cpu_before
            ratios.append(loaded / unloaded)
            sent = ", ".join(f"{k} x{v}" for k, v in sorted(answers.items()))
            rows.append(
                Row(
                    f"under maximal requests, {label}",
                    f"attacker: {sent}; listener CPU {cpu:.1f} s",
                    f"p50 {loaded * 1000:.1f} ms ({loaded / unloaded:.2f}x)",
                )
            )
        # The same allowed-AE loop against a listener without the per-host budget and block: what the
        # negotiation process alone keeps off the legitimate sender.
        open_listener = deploy.start_listener(
            {
                "PACSVLM_STABLE_SECONDS": "3600",
                "PACSVLM_ASSOCIATION_REQUEST_BUDGET": "0",
                "PACSVLM_REJECTIONS_BEFORE_BLOCK": "1000000",
            },
            port=(open_port := free_port()),
        )
        legit_stores(open_port, 20, "FUZZER")
        open_unloaded = percentile(legit_stores(open_port, args.instances, "FUZZER"), 0.5)
        with attacker(open_port, CALLING_AE, duration, "127.0.0.6") as answers:
            loaded = percentile(legit_stores(open_port, args.instances, "FUZZER"), 0.5)
        ratios.append(loaded / open_unloaded)
        sent = ", ".join(f"{k} x{v}" for k, v in sorted(answers.items()))
        rows.append(
            Row(
                "under maximal requests, allowed AE, no budget or block",
                f"attacker: {sent}; unloaded p50 {open_unloaded * 1000:.1f} ms",
                f"p50 {loaded * 1000:.1f} ms ({loaded / open_unloaded:.2f}x)",
            )
        )
        open_listener.stop()
        reset_peak_rss(pid)
        held = hold_half_sent_requests(port, "127.0.0.3", 600)
        idle = open_idle_connections(port, "127.0.0.4", 1500)
        rows.append(
            Row(
                "600 half-sent requests, 1500 idle connections",
                f"still open after 1 s: {still_open(held)} and {still_open(idle)}",
                f"peak {peak_rss_mib(pid):.0f} MiB",
            )
        )
        for sock in held + idle:
            sock.close()
        answer = command_set_bomb(port, 64)
        rows.append(Row("command set bomb, 64 MiB", answer.label, f"peak {peak_rss_mib(pid):.0f} MiB"))
        answer = empty_fragment_flood(port, 32)
        rows.append(Row("empty data PDV items, 32 MiB", answer.label, f"peak {peak_rss_mib(pid):.0f} MiB"))
        data, sop_uid, _ = large_instance(args.large_mib)
        answer = send_large(port, data, sop_uid)
        del data
        rows.append(Row(f"one {args.large_mib} MiB instance", answer.label, f"peak {peak_rss_mib(pid):.0f} MiB"))
        deflated, sop_uid, _ = deflated_instance(args.large_mib)
        answer = send_large(port, deflated, sop_uid, context_id=3)
        ratio = args.large_mib * 2**20 / len(deflated)
        rows.append(
            Row(
                f"one {args.large_mib} MiB instance, deflated {len(deflated) / 2**20:.1f} MiB (x{ratio:.0f})",
                answer.label,
                f"peak {peak_rss_mib(pid):.0f} MiB",
            )
        )
        del deflated
        peak = peak_rss_mib(pid)
        alive = listener.running()
    table = Table(title="hostile peers against pacs-vlm listen")
    for column in ("case", "detail", "result"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.case, row.detail, row.value)
    console.print(table)
    worst = max(ratios)
    if not alive:
        progress_console.print("the listener died during the run", markup=False)
    print(f"hostile legit_p50_ratio={worst:.2f} listener_peak_mib={peak:.0f}", flush=True)
    return 0 if alive and worst <= 2.0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
