"""Fuzzing the intake: mutated data sets, PDUs and STOW-RS bodies against running processes.

Three targets, each a hypothesis strategy of cases and a function that sends one case over a real
socket and says whether it was answered:

``dataset``
    a valid CT instance (pydicom's ``CT_small.dcm`` with fresh UIDs) whose bytes are mutated (byte
    flips, element lengths up to ``0xFFFFFFFF``, VRs, truncation, inserted bytes, a file meta group
    in front), sent as one C-STORE on an Explicit VR Little Endian (or Deflated) context;
``pdu``
    an A-ASSOCIATE-RQ with mutated fields and lengths; its fixed fields alone (protocol version, AE
    titles: what the listener judges before reading further) mutated, declared longer or shorter than
    sent, or half-sent and left; a P-DATA-TF after a valid association with mutated PDU lengths, PDV
    item lengths, context ids and control bytes; or a command set mutated, split into many fragments
    or grown past its bound;
``stow``
    a ``multipart/related`` STOW-RS body with mutated file meta and data set bytes, boundaries,
    part headers and media types.

A case is *answered* when the listener sends a DIMSE status, an A-ASSOCIATE-AC/RJ or an A-ABORT,
or closes the connection, and the API an HTTP status below 500, within the timeout; anything else
(no answer, an HTTP 5xx, a process that died) is a failure.

``python -m bench.fuzz --minutes N`` starts ``pacs-vlm listen`` and ``pacs-vlm api`` on the
machine's PostgreSQL and Redis (as ``bench.ingest`` does), runs the targets in turn for N minutes,
prints a table (cases, failures, answers, RSS of the listener before and after) and, last::

    fuzz cases=<n> failures=<m>
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from bench.wire import (
    ABORT_RQ,
    Answer,
    ElementHeader,
    associate_rq,
    ct_instance,
    element_headers,
    file_meta,
    open_association,
    p_data,
    pdv,
    read_answer,
    send_store,
    store_command,
)

#: Lengths a fuzzer likes: zero, odd, off by one, the undefined length and the largest values.
LENGTHS = st.sampled_from([0, 1, 2, 3, 7, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF])


# --------------------------------------------------------------------------- mutations


#: One mutation: (kind, position in 0..1 of the data, value).
Mutation = tuple[str, float, int]

_mutation = st.tuples(
    st.sampled_from(["flip", "length", "vr", "truncate", "insert", "byte"]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.one_of(LENGTHS, st.integers(min_value=0, max_value=0xFFFFFFFF)),
)


def mutate(data: bytes, mutations: Sequence[Mutation], headers: Sequence[ElementHeader] = ()) -> bytes:
    """Apply mutations to bytes; length and VR mutations hit element headers when given.

    Parameters
    ----------
    data : bytes
        The original.
    mutations : sequence of Mutation
        What to do, in order.
    headers : sequence of ElementHeader
        Top-level elements of ``data`` (for ``length`` and ``vr``).

    Returns
    -------
    bytes
        The mutated bytes.
    """
    out = bytearray(data)
    for kind, where, value in mutations:
        if not out:
            break
        position = min(int(where * len(out)), len(out) - 1)
        if kind in ("length", "vr") and headers:
            header = headers[min(int(where * len(headers)), len(headers) - 1)]
            if kind == "length" and header.length_offset + header.length_size <= len(out):
                size = header.length_size
                out[header.length_offset : header.length_offset + size] = (value % (1 << (8 * size))).to_bytes(
                    size, "little"
                )
            elif kind == "vr" and header.offset + 6 <= len(out):
                out[header.offset + 4 : header.offset + 6] = (value & 0xFFFF).to_bytes(2, "little")
        elif kind == "flip":
            out[position] ^= 1 << (value % 8)
        elif kind == "byte":
            out[position] = value & 0xFF
        elif kind == "truncate":
            del out[position:]
        elif kind == "insert":
            out[position:position] = value.to_bytes(4, "little") * (1 + value % 3)
    return bytes(out)


@dataclass(frozen=True)
class DatasetCase:
    """A mutated instance for one C-STORE."""

    mutations: tuple[Mutation, ...]
    with_meta: bool
    deflated: bool


@dataclass(frozen=True)
class PduCase:
    """One case of the ``pdu`` target.

    ``kind`` is ``associate`` (a mutated A-ASSOCIATE-RQ), ``preassociation`` (its fixed fields), or,
    after a valid association, ``pdata`` (a P-DATA-TF) or ``command`` (a command set).
    """

    kind: str
    mutations: tuple[Mutation, ...]
    pdu_length: int | None
    item_length: int | None
    context_id: int
    control: int


@dataclass(frozen=True)
class StowCase:
    """A mutated STOW-RS body: the Part 10 bytes (file meta region weighted), the framing, the headers."""

    meta_mutations: tuple[Mutation, ...]
    mutations: tuple[Mutation, ...]
    framing: str
    part_type: str | None


def dataset_cases() -> st.SearchStrategy[DatasetCase]:
    """Cases of the ``dataset`` target."""
    return st.builds(
        DatasetCase,
        mutations=st.lists(_mutation, min_size=1, max_size=4).map(tuple),
        with_meta=st.booleans(),
        deflated=st.booleans(),
    )


def pdu_cases() -> st.SearchStrategy[PduCase]:
    """Cases of the ``pdu`` target."""
    return st.builds(
        PduCase,
        kind=st.sampled_from(["associate", "preassociation", "pdata", "command"]),
        mutations=st.lists(_mutation, max_size=3).map(tuple),
        pdu_length=st.one_of(st.none(), LENGTHS),
        item_length=st.one_of(st.none(), LENGTHS),
        context_id=st.sampled_from([1, 1, 3, 0, 2, 255]),
        control=st.integers(min_value=0, max_value=255),
    )


def stow_cases() -> st.SearchStrategy[StowCase]:
    """Cases of the ``stow`` target."""
    return st.builds(
        StowCase,
        meta_mutations=st.lists(_mutation, max_size=3).map(tuple),
        mutations=st.lists(_mutation, max_size=2).map(tuple),
        framing=st.sampled_from(["ok", "no-close", "wrong-boundary", "garbage-headers", "two-parts", "empty"]),
        part_type=st.sampled_from(
            [None, "application/dicom", "application/dicom; transfer-syntax=1.2.3", "text/plain", "application/dicom"]
        ),
    )


# --------------------------------------------------------------------------- running cases


def run_dataset_case(port: int, case: DatasetCase, timeout: float) -> Answer:
    """Send one mutated instance as a C-STORE and return the answer."""
    data, sop_uid = ct_instance()
    data = mutate(data, case.mutations, element_headers(data))
    if case.with_meta:
        data = file_meta(sop_uid)[132:] + data  # a group 0002 in the data set, where it does not belong
    if case.deflated:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return send_store(port, data, sop_uid, context_id=3 if case.deflated else 1, timeout=timeout)


def run_pdu_case(port: int, case: PduCase, timeout: float) -> Answer:
    """Send one mutated PDU and return the answer."""
    if case.kind == "associate":
        raw = bytearray(mutate(associate_rq(), case.mutations))
        if case.pdu_length is not None and len(raw) >= 6:
            raw[2:6] = (case.pdu_length & 0xFFFFFFFF).to_bytes(4, "big")
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            try:
                sock.sendall(bytes(raw))
            except OSError:
                return Answer(0)
            return read_answer(sock, timeout)
    if case.kind == "preassociation":
        return _run_preassociation_case(port, case, timeout)
    if case.kind == "command":
        return _run_command_case(port, case, timeout)
    data, sop_uid = ct_instance()
    fragment = mutate(data[:4096], case.mutations)
    item = bytearray(pdv(case.context_id, fragment, command=False, last=False))
    item[5] = case.control
    if case.item_length is not None:
        item[0:4] = case.item_length.to_bytes(4, "big")
    pdu = bytearray(p_data(pdv(1, store_command(sop_uid), command=True, last=True)) + p_data(bytes(item)))
    if case.pdu_length is not None:
        second = len(pdu) - len(item) - 6
        pdu[second + 2 : second + 6] = case.pdu_length.to_bytes(4, "big")
    with open_association(port, timeout) as sock:
        try:
            sock.sendall(bytes(pdu))
        except OSError:
            return Answer(0)
        answer = read_answer(sock, timeout)
        if answer.pdu_type == 4:  # a status for the command: the fragment's message is over, release
            with contextlib.suppress(OSError):
                sock.sendall(ABORT_RQ)
        return answer


def stow_body(case: StowCase, boundary: str) -> tuple[bytes, str]:
    """Build a mutated STOW-RS body and its Content-Type."""
    data, sop_uid = ct_instance()
    meta = file_meta(sop_uid)
    part10 = mutate(meta, case.meta_mutations) + mutate(data, case.mutations, element_headers(data))
    head = f"--{boundary}\r\n" + (f"Content-Type: {case.part_type}\r\n" if case.part_type else "") + "\r\n"
    part = head.encode() + part10 + b"\r\n"
    close = f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    body = {
        "ok": part + close,
        "no-close": part,
        "wrong-boundary": part.replace(boundary.encode(), b"other-boundary") + close,
        "garbage-headers": part.replace(b"\r\n\r\n", b"\r\nX-\x00\xff: \x01\r\nnot a header\r\n\r\n", 1) + close,
        "two-parts": part + part + close,
        "empty": close,
    }[case.framing]
    return body, content_type


def run_stow_case(url: str, auth: tuple[str, str], case: StowCase, timeout: float) -> Answer:
    """POST one mutated body to ``/dicomweb/studies``; the HTTP status goes into :attr:`Answer.status`."""
    import httpx

    body, content_type = stow_body(case, f"fuzz-{uuid.uuid4().hex[:12]}")
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    try:
        response = httpx.post(f"{url}/dicomweb/studies", content=body, headers=headers, auth=auth, timeout=timeout)
    except httpx.TimeoutException:
        return Answer(None)
    except httpx.TransportError:
        return Answer(0)
    return Answer(-1, response.status_code)


def failed(answer: Answer) -> bool:
    """Whether an answer is a failure: no answer in time, or an HTTP 5xx."""
    return answer.pdu_type is None or (answer.pdu_type == -1 and (answer.status or 0) >= 500)


def answer_label(answer: Answer) -> str:
    """Label of an answer for tables (HTTP statuses as ``HTTP 400``)."""
    return f"HTTP {answer.status}" if answer.pdu_type == -1 else answer.label


def _run_preassociation_case(port: int, case: PduCase, timeout: float) -> Answer:
    """Mutate only the request's 68 fixed bytes; declare a (fuzzed) length; send all, or stop half-way."""
    raw = associate_rq()
    fixed = mutate(raw[6:74], case.mutations)[:68].ljust(68, b"\x00")
    body = fixed + raw[74:]
    declared = len(body) if case.pdu_length is None else case.pdu_length & 0xFFFFFFFF
    sent = len(body) if case.item_length is None else min(len(body), case.item_length)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(b"\x01\x00" + declared.to_bytes(4, "big") + body[:sent])
        except OSError:
            return Answer(0)
        answer = read_answer(sock, timeout)  # a half-sent request is ended by the ACSE timeout
        if answer.pdu_type == 0x02:
            with contextlib.suppress(OSError):
                sock.sendall(ABORT_RQ)
        return answer


def _run_command_case(port: int, case: PduCase, timeout: float) -> Answer:
    """A mutated C-STORE command set, cut into fragments of a fuzzed size, some repeated past the bound."""
    _, sop_uid = ct_instance()
    command = mutate(store_command(sop_uid), case.mutations)
    size = max(1, min(case.item_length or len(command), 16384))
    repeats = 1 + (case.pdu_length or 0) % 8  # up to 8 copies, and past 64 KiB for the larger fragments
    pieces = [command[i : i + size] for i in range(0, max(len(command), 1), size)] * repeats
    if (case.pdu_length or 0) % 3 == 0:
        pieces += [bytes(16384)] * 5  # grow past the command set bound
    items = [pdv(1, piece, command=True, last=i == len(pieces) - 1) for i, piece in enumerate(pieces)]
    with open_association(port, timeout) as sock:
        try:
            for item in items:
                sock.sendall(p_data(item))
        except OSError:
            return Answer(0)
        answer = read_answer(sock, timeout)
        with contextlib.suppress(OSError):
            sock.sendall(ABORT_RQ)
        return answer


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- the command


@dataclass
class TargetTally:
    """Cases run and failures of one target."""

    cases: int = 0
    failures: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def _run_target(
    strategy: st.SearchStrategy[object], run: Callable[[object], Answer], tally: TargetTally, batch: int
) -> None:
    """Run one batch of hypothesis-generated cases; failures are counted, never raised."""
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(
        max_examples=batch,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case: object) -> None:
        answer = run(case)
        tally.cases += 1
        tally.answers[answer_label(answer)] += 1
        if failed(answer):
            tally.failures += 1
            if len(tally.examples) < 5:
                tally.examples.append(f"{answer_label(answer)}: {case!r}"[:300])

    one()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fuzz targets for some minutes against a listener and an API; print the table and summary.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments.

    Returns
    -------
    int
        0 when no case failed and both processes survived, else 1.
    """
    from rich.table import Table

    from bench.ingest import BenchError, ManagedProcess, console, free_port, port_open, progress_console, wait_until
    from bench.load import Deployment

    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz",
        description="Fuzz the listener (data sets, PDUs) and STOW-RS for some minutes; "
        "print a table and, last, 'fuzz cases=<n> failures=<m>'.",
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/12", help="Redis database to use (flushed)")
    parser.add_argument("--database-url", help="an existing migrated database (default: a new one on 127.0.0.1:5432)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    tallies = {name: TargetTally() for name in ("dataset", "pdu", "stow")}
    timeout = 15.0
    with (
        tempfile.TemporaryDirectory(prefix="pacsvlm-fuzz-") as tmp,
        Deployment(Path(tmp), args.broker_url, args.database_url) as deploy,
    ):
        try:
            listener = deploy.start_listener(
                {
                    "PACSVLM_NETWORK_TIMEOUT": "2",
                    "PACSVLM_ACSE_TIMEOUT": "2",
                    "PACSVLM_REJECTIONS_BEFORE_BLOCK": "1000000",  # keep fuzzing, do not turn the fuzzer away
                }
            )
            auth = deploy.add_uploader()
            api_port = free_port()
            api = ManagedProcess(
                "pacs-vlm api",
                [sys.executable, "-m", "worker.cli", "api", "--port", str(api_port)],
                deploy.env({}),
                Path(tmp) / "api.log",
                cwd=deploy.repo,
            )
            api.start()
            deploy.processes.append(api)
            wait_until(lambda: port_open(api_port), "open HTTP port", api)
        except BenchError as exc:
            progress_console.print(f"[red]fuzz failed to start:[/red] {exc}", markup=True, highlight=False)
            return 1
        assert listener.process is not None
        pid = listener.process.pid
        url = f"http://127.0.0.1:{api_port}"
        runners: dict[str, tuple[st.SearchStrategy[object], Callable[[object], Answer]]] = {
            "dataset": (dataset_cases(), lambda case: run_dataset_case(deploy.dicom_port, case, timeout)),  # type: ignore[arg-type]
            "pdu": (pdu_cases(), lambda case: run_pdu_case(deploy.dicom_port, case, timeout)),  # type: ignore[arg-type]
            "stow": (stow_cases(), lambda case: run_stow_case(url, auth, case, timeout)),  # type: ignore[arg-type]
        }
        rss_before = rss_bytes(pid)
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            for name, (strategy, run) in runners.items():
                _run_target(strategy, run, tallies[name], batch=20)
            if not (listener.running() and api.running()):
                break
        rss_after = rss_bytes(pid) if listener.running() else 0
        survived = {"listener": listener.running(), "api": api.running()}
    table = Table(
        title=f"fuzz: {args.minutes:g} min, listener RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
    )
    for column in ("target", "cases", "failures", "answers (most frequent)"):
        table.add_column(column, justify="right" if column in ("cases", "failures") else "left")
    for name, tally in tallies.items():
        common = ", ".join(f"{label} x{count}" for label, count in tally.answers.most_common(5))
        table.add_row(name, str(tally.cases), str(tally.failures), common)
    console.print(table)
    for name, tally in tallies.items():
        for example in tally.examples:
            progress_console.print(f"{name} failure: {example}", markup=False, highlight=False)
    for name, alive in survived.items():
        if not alive:
            progress_console.print(f"{name} died during the run", markup=False)
    cases = sum(t.cases for t in tallies.values())
    failures = sum(t.failures for t in tallies.values()) + sum(not alive for alive in survived.values())
    print(f"fuzz cases={cases} failures={failures}", flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
