"""Ingest benchmark: our listener against dcmtk storescp and Orthanc, taking the same CT series.

The benchmark generates one synthetic CT series (by default 300 instances of
512 x 512 16-bit pixels, about 157 MB) and sends it with dcmtk's ``storescu``
(one association, 128 KiB PDUs, ``TCP_NODELAY``) to four receivers that it
starts itself on free local ports:

``storescp``
    dcmtk's reference storage SCP, writing plain files (no fsync).
``orthanc``
    Orthanc with its default SQLite index and file storage area.
``ours``
    ``pacs-vlm listen`` in its production configuration: PostgreSQL index,
    Redis broker, fsync on.  It answers a C-STORE only after the file was
    fsynced, hard-linked to its final name, its folder fsynced and the
    database row committed.
``pynetdicom-floor``
    our AE and association server with a C-STORE handler that stores nothing
    (``bench/pynetdicom_floor.py``): what pynetdicom's network and DIMSE layer
    costs before any storing, the floor under ``ours``.

What is measured is the wall-clock time of the ``storescu`` process, from
association request to release, i.e. the time until the sender has a success
status for every instance.  Each round sends the series once to every receiver
in turn (storescp, orthanc, ours, pynetdicom-floor) and every round stores fresh: the receivers
are emptied between sends, so nothing is skipped as a duplicate.  After each
send the benchmark checks that the receiver holds every instance.

The last line printed is::

    ingest ours_vs_storescp=<ratio> ours_vs_orthanc=<ratio>

where a ratio is our throughput divided by theirs (their median seconds over
ours); above 1.00 means faster than them.  With ``--baseline <checkout>`` a
fifth receiver, ``ours-baseline``, runs our listener from that checkout (the
tree before a change) in the same rounds, and the line ends with
``baseline_vs_orthanc=<ratio>``: a before/after comparison under one load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.processes import (
    CALLING_AE,
    HOST,
    MAX_PDU,
    ORTHANC,
    SEND_TIMEOUT,
    STORESCP,
    STORESCU,
    BenchError,
    console,
    progress_console,
)
from bench.processes import ManagedProcess as ManagedProcess  # bench.load, bench.fuzz import these from here
from bench.processes import free_port as free_port
from bench.processes import port_open as port_open
from bench.processes import wait_until as wait_until
from bench.receivers import RECEIVERS, BaselineListener, Receiver

DEFAULT_INSTANCES = 300
DEFAULT_ROUNDS = 3
QUICK_INSTANCES = 20
QUICK_ROUNDS = 1


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    """The timed sends to one receiver.

    Attributes
    ----------
    name : str
        The receiver.
    seconds : list of float
        Wall-clock seconds of each round's send.
    """

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median seconds over the rounds."""
        return statistics.median(self.seconds)


def generate_series(folder: Path, instances: int, progress: Progress) -> list[Path]:
    """Write the synthetic CT series, showing the files as they appear.

    Parameters
    ----------
    folder : pathlib.Path
        Target folder (created).
    instances : int
        Number of slices.
    progress : rich.progress.Progress
        Progress display to add a task to.

    Returns
    -------
    list of pathlib.Path
        The files, in slice order.
    """
    from integration.samples import write_ct_series

    task = progress.add_task("generating CT series", total=instances)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(write_ct_series, folder, instances)
        while not future.done():
            progress.update(task, completed=sum(1 for _ in folder.glob("*.dcm")) if folder.is_dir() else 0)
            time.sleep(0.2)
        files = future.result()
    progress.update(task, completed=instances)
    return files


def send(receiver: Receiver, files: Sequence[Path]) -> float:
    """Send the files to a receiver with storescu in one association and time it.

    Parameters
    ----------
    receiver : Receiver
        Where to send.
    files : sequence of pathlib.Path
        The DICOM files.

    Returns
    -------
    float
        Wall-clock seconds of the storescu process.

    Raises
    ------
    BenchError
        storescu failed.
    """
    command = [
        STORESCU, "--max-pdu", str(MAX_PDU), "-aet", CALLING_AE, "-aec", receiver.called_ae,
        HOST, str(receiver.port), *map(str, files),
    ]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SEND_TIMEOUT, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise BenchError(
            f"storescu to {receiver.name} exited with {completed.returncode}:\n{completed.stderr[-4000:]}\n"
            f"--- {receiver.name} log ---\n{receiver.log_tail()}"
        )
    return elapsed


def expect_count(receiver: Receiver, expected: int, when: str) -> None:
    """Fail unless the receiver holds exactly ``expected`` instances.

    Parameters
    ----------
    receiver : Receiver
        The receiver.
    expected : int
        Instances it must hold.
    when : str
        Situation, for the error message.

    Raises
    ------
    BenchError
        The count differs.
    """
    held = receiver.count()
    if held != expected:
        raise BenchError(
            f"{receiver.name} holds {held} instances {when}, expected {expected}\n"
            f"--- {receiver.name} log ---\n{receiver.log_tail()}"
        )


def run_benchmark(instances: int, rounds: int, kinds: Sequence[type[Receiver]] = RECEIVERS) -> tuple[list[Result], int]:
    """Generate the series, start the receivers, send ``rounds`` times to each and stop everything.

    Parameters
    ----------
    instances : int
        Instances in the series.
    rounds : int
        Sends per receiver; the receivers alternate within each round.
    kinds : sequence of Receiver classes
        The receivers (default :data:`RECEIVERS`).

    Returns
    -------
    results : list of Result
        One per receiver, in ``kinds`` order.
    total_bytes : int
        Size of the series' files.
    """
    workdir = Path(tempfile.mkdtemp(prefix="pacsvlm-bench-"))
    try:
        with ExitStack() as stack:
            progress = stack.enter_context(
                Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=progress_console,
                )
            )
            files = generate_series(workdir / "series", instances, progress)
            total_bytes = sum(path.stat().st_size for path in files)

            receivers: list[Receiver] = []
            starting = progress.add_task("starting receivers", total=len(kinds))
            for cls in kinds:
                receiver = cls(workdir / cls.name)
                stack.callback(receiver.stop)  # registered first: a failed start is cleaned up too
                receiver.start()
                receivers.append(receiver)
                progress.advance(starting)

            results = [Result(receiver.name) for receiver in receivers]
            sending = progress.add_task("sending", total=rounds * len(receivers))
            for round_number in range(1, rounds + 1):
                for receiver, result in zip(receivers, results, strict=True):
                    progress.update(sending, description=f"round {round_number}/{rounds}: sending to {receiver.name}")
                    receiver.clear()
                    expect_count(receiver, 0, f"after clearing, before round {round_number}")
                    result.seconds.append(send(receiver, files))
                    expect_count(receiver, instances, f"after round {round_number}")
                    progress.advance(sending)
            progress.update(sending, description="sending")
        return results, total_bytes
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- reporting


def results_table(results: Sequence[Result], instances: int, total_bytes: int) -> Table:
    """Build the table of seconds per round, median, instances/s and MB/s.

    Parameters
    ----------
    results : sequence of Result
        One per receiver.
    instances : int
        Instances per send.
    total_bytes : int
        Bytes per send.

    Returns
    -------
    rich.table.Table
        The table.
    """
    rounds = max(len(result.seconds) for result in results)
    table = Table(title=f"storescu -> receiver: {instances} instances, {total_bytes / 1e6:.1f} MB per send")
    table.add_column("receiver", no_wrap=True)
    for number in range(1, rounds + 1):
        table.add_column(f"round {number} s", justify="right", no_wrap=True)
    for header in ("median s", "instances/s", "MB/s"):
        table.add_column(header, justify="right", no_wrap=True)
    for result in results:
        median = result.median
        table.add_row(
            result.name,
            *(f"{seconds:.2f}" for seconds in result.seconds),
            f"{median:.2f}",
            f"{instances / median:.0f}",
            f"{total_bytes / 1e6 / median:.1f}",
        )
    return table


def summary_line(results: Sequence[Result]) -> str:
    """Return ``ingest ours_vs_storescp=<ratio> ours_vs_orthanc=<ratio>`` (our throughput over theirs).

    Parameters
    ----------
    results : sequence of Result
        Must include ``ours``, ``storescp`` and ``orthanc``.

    Returns
    -------
    str
        The summary line.
    """
    median = {result.name: result.median for result in results}
    ours = median["ours"]
    line = f"ingest ours_vs_storescp={median['storescp'] / ours:.2f} ours_vs_orthanc={median['orthanc'] / ours:.2f}"
    if BaselineListener.name in median:
        line += f" baseline_vs_orthanc={median['orthanc'] / median[BaselineListener.name]:.2f}"
    return line


# --------------------------------------------------------------------------- command line


def positive_int(text: str) -> int:
    """Parse a positive integer for argparse.

    Parameters
    ----------
    text : str
        The argument.

    Returns
    -------
    int
        The value.

    Raises
    ------
    argparse.ArgumentTypeError
        Not an integer of at least 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    argparse.Namespace
        ``instances`` and ``rounds``, with ``--quick`` applied.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=(
            "Time storescu sending a generated CT series to dcmtk storescp, Orthanc and the pacs-vlm listener "
            "(PostgreSQL, Redis, fsync on); print a table and, last, "
            "'ingest ours_vs_storescp=<ratio> ours_vs_orthanc=<ratio>' (our throughput over theirs)."
        ),
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=None, help=f"sends per receiver (default {DEFAULT_ROUNDS})"
    )
    parser.add_argument(
        "--instances",
        type=positive_int,
        default=None,
        help=f"instances in the series, 512x512 16-bit each (default {DEFAULT_INSTANCES})",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run our listener from this checkout (e.g. a git worktree of the commit before a change) "
        "in the same rounds, as 'ours-baseline'",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_INSTANCES} instances, {QUICK_ROUNDS} round (unless given explicitly)",
    )
    args = parser.parse_args(argv)
    if args.instances is None:
        args.instances = QUICK_INSTANCES if args.quick else DEFAULT_INSTANCES
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks, so everything is cleaned up


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table and the summary line.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status: 0 on success, 1 when the benchmark failed.
    """
    args = parse_args(argv)
    for tool in (STORESCU, STORESCP, ORTHANC):
        if not Path(tool).is_file():
            progress_console.print(f"[red]error:[/red] {tool} not found (install dcmtk and orthanc)")
            return 1
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        kinds = RECEIVERS
        if args.baseline is not None:
            BaselineListener.checkout = args.baseline.resolve()
            kinds = (*RECEIVERS, BaselineListener)
        results, total_bytes = run_benchmark(args.instances, args.rounds, kinds)
    except BenchError as exc:
        progress_console.print("[red]benchmark failed:[/red]", end=" ")
        progress_console.print(str(exc), markup=False, highlight=False)
        return 1
    console.print(results_table(results, args.instances, total_bytes))
    print(summary_line(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
