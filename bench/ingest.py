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
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
MAX_PDU = 131_072
CALLING_AE = "BENCH"
HOST = "127.0.0.1"
POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
BROKER_URL = "redis://127.0.0.1:6379/13"
START_TIMEOUT = 60.0
SEND_TIMEOUT = 900.0

DEFAULT_INSTANCES = 300
DEFAULT_ROUNDS = 3
QUICK_INSTANCES = 20
QUICK_ROUNDS = 1

progress_console = Console(stderr=True)
# Wide enough for the table when stdout is a file or a pipe (rich assumes 80 columns there).
console = Console() if sys.stdout.isatty() else Console(width=200)


class BenchError(RuntimeError):
    """The benchmark could not run or a receiver misbehaved (a wrong count, a failed send)."""


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """Return a TCP port on the loopback interface that nothing listens on now.

    Returns
    -------
    int
        The port number.
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Return whether something accepts TCP connections on ``127.0.0.1:port``.

    Parameters
    ----------
    port : int
        The port.
    timeout : float
        Connect timeout in seconds.

    Returns
    -------
    bool
        True when a connection succeeded.
    """
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool], what: str, process: ManagedProcess, timeout: float = START_TIMEOUT
) -> None:
    """Poll ``predicate`` until it holds; fail early when ``process`` exits.

    Parameters
    ----------
    predicate : callable
        Returns True when the wait is over.
    what : str
        What is awaited, for the error message.
    process : ManagedProcess
        The process that should make ``predicate`` true.
    timeout : float
        Seconds to wait at most.

    Raises
    ------
    BenchError
        The process exited or the timeout passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if not process.running():
            raise BenchError(f"{process.name} exited before {what}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{process.name}: no {what} after {timeout:.0f} s:\n{process.log_tail()}")
        time.sleep(0.05)


@dataclass
class ManagedProcess:
    """A server subprocess in its own process group, with its output in a log file.

    Attributes
    ----------
    name : str
        Name for messages.
    command : list of str
        The command line.
    env : dict of str to str
        The complete environment.
    log_path : pathlib.Path
        File that receives stdout and stderr.
    cwd : pathlib.Path, optional
        Working directory.
    """

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the process (in a new session, so that :meth:`stop` reaches its children too)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        """Return whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Send SIGTERM to the process group, SIGKILL after ``timeout``; a no-op when not running.

        Parameters
        ----------
        timeout : float
            Seconds to wait for a clean exit.
        """
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        # Children of a forking server (storescp --fork) may outlive the parent.
        _signal_group(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the process's output.

        Parameters
        ----------
        lines : int
            How many lines.

        Returns
        -------
        str
            The lines, or an empty string when there is no log.
        """
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --------------------------------------------------------------------------- receivers


class Receiver(ABC):
    """A storage SCP under test: started once, emptied before each send, stopped at the end.

    Parameters
    ----------
    workdir : pathlib.Path
        A fresh folder for the receiver's files and log.
    """

    #: Name in the table and the summary line.
    name: str
    #: AE title that storescu calls.
    called_ae: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()

    @abstractmethod
    def start(self) -> None:
        """Start the receiver and wait until it accepts associations."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the receiver and release what it holds; safe to call more than once, or after a failed start."""

    @abstractmethod
    def clear(self) -> None:
        """Delete every stored instance, so that the next send stores fresh."""

    @abstractmethod
    def count(self) -> int:
        """Return the number of instances the receiver holds."""

    @abstractmethod
    def log_tail(self) -> str:
        """Return the end of the receiver's log, for error messages."""


class StoreSCP(Receiver):
    """dcmtk's ``storescp``, forking per association and writing plain files (no fsync)."""

    name = "storescp"
    called_ae = "STORESCP"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.output = workdir / "files"
        self.output.mkdir()
        # TCP_NODELAY matters: without it the small C-STORE responses wait on Nagle and delayed ACKs (~40x slower).
        self.server = ManagedProcess(
            name="storescp",
            command=[STORESCP, "--fork", "-od", str(self.output), "--max-pdu", str(MAX_PDU), str(self.port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            log_path=workdir / "storescp.log",
        )

    def start(self) -> None:  # noqa: D102
        self.server.start()
        wait_until(lambda: port_open(self.port), "open DICOM port", self.server)

    def stop(self) -> None:  # noqa: D102
        self.server.stop()

    def clear(self) -> None:  # noqa: D102
        for path in self.output.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def count(self) -> int:  # noqa: D102
        return sum(1 for path in self.output.iterdir() if path.is_file())

    def log_tail(self) -> str:  # noqa: D102
        return self.server.log_tail()


class Orthanc(Receiver):
    """Orthanc with its default SQLite index and file storage area (``SyncStorageArea`` at its default)."""

    name = "orthanc"
    called_ae = "ORTHANC"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        storage = workdir / "storage"
        config = {
            "Name": "pacs-vlm-bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.called_ae,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "MaximumPduLength": MAX_PDU,
            "Plugins": [],
        }
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.server = ManagedProcess(
            name="Orthanc",
            command=[ORTHANC, str(config_path)],
            env={**os.environ, "TCP_NODELAY": "1"},
            log_path=workdir / "orthanc.log",
        )

    def start(self) -> None:  # noqa: D102
        self.server.start()
        wait_until(lambda: port_open(self.port), "open DICOM port", self.server)
        wait_until(self._http_ready, "answer to GET /system", self.server)

    def stop(self) -> None:  # noqa: D102
        self.server.stop()

    def clear(self) -> None:  # noqa: D102
        for study in self._request("GET", "/studies"):
            self._request("DELETE", f"/studies/{study}")

    def count(self) -> int:  # noqa: D102
        return int(self._request("GET", "/statistics")["CountInstances"])

    def log_tail(self) -> str:  # noqa: D102
        return self.server.log_tail()

    def _http_ready(self) -> bool:
        try:
            self._request("GET", "/system")
        except (OSError, BenchError):
            return False
        return True

    def _request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise BenchError(f"Orthanc {method} {path}: HTTP {exc.code}") from exc
        return json.loads(body) if body else None


class OurListener(Receiver):
    """``pacs-vlm listen`` in production configuration: a fresh PostgreSQL database, Redis broker, fsync on."""

    name = "ours"
    called_ae = "PACSVLM"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.database = f"pacsvlm_bench_{uuid.uuid4().hex[:10]}"
        self.database_url = POSTGRES_URL.format(name=self.database)
        self.data_dir = workdir / "data"
        self.data_dir.mkdir()
        self._created_database = False
        env = {key: value for key, value in os.environ.items() if not key.startswith("PACSVLM_")}
        env.update(
            PACSVLM_DATABASE_URL=self.database_url,
            PACSVLM_BROKER_URL=BROKER_URL,
            PACSVLM_DATA_DIR=str(self.data_dir),
            PACSVLM_CALLING_AES=json.dumps({CALLING_AE: {}}),
            PACSVLM_LISTEN_HOST=HOST,
            PACSVLM_LISTEN_PORT=str(self.port),
            # No study completes during a round: assembly would compete with the ingest being measured.
            PACSVLM_STABLE_SECONDS="3600",
            PACSVLM_MIN_FREE_BYTES="0",
            PYTHONUNBUFFERED="1",
        )
        self.server = ManagedProcess(
            name="pacs-vlm listen",
            command=[sys.executable, "-m", "worker.cli", "listen"],
            env=env,
            log_path=workdir / "listener.log",
            cwd=REPO,
        )

    def start(self) -> None:  # noqa: D102
        import psycopg

        from integration.store.migrate import upgrade

        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self._created_database = True
        upgrade(self.database_url)
        self._flush_broker()
        self.server.start()
        wait_until(lambda: port_open(self.port), "open DICOM port", self.server)

    def stop(self) -> None:  # noqa: D102
        import psycopg

        self.server.stop()
        try:
            self._flush_broker()
        finally:
            if self._created_database:
                with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
                self._created_database = False

    def clear(self) -> None:  # noqa: D102
        import psycopg

        with psycopg.connect(self._dsn()) as conn:
            for table in ("instances", "series", "analysis_jobs", "studies"):
                conn.execute(f"DELETE FROM {table}")  # fixed table names, no input
        instances = self.data_dir / "instances"
        if instances.is_dir():
            for study in instances.iterdir():
                if study.is_dir() and not study.name.startswith("."):  # keep .incoming spares and .locks
                    shutil.rmtree(study)

    def count(self) -> int:  # noqa: D102
        import psycopg

        with psycopg.connect(self._dsn()) as conn:
            row = conn.execute("SELECT count(*) FROM instances").fetchone()
        return int(row[0]) if row else 0

    def log_tail(self) -> str:  # noqa: D102
        return self.server.log_tail()

    def _dsn(self) -> str:
        return f"host=127.0.0.1 port=5432 user=postgres dbname={self.database}"

    @staticmethod
    def _flush_broker() -> None:
        import redis

        client = redis.Redis.from_url(BROKER_URL)
        try:
            client.flushdb()
        finally:
            client.close()


class PynetdicomFloor(Receiver):
    """Our AE and server with a C-STORE handler that stores nothing: pynetdicom's own cost per instance."""

    name = "pynetdicom-floor"
    called_ae = "PACSVLM"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.counter = workdir / "answers"
        self.counter.touch()
        self.server = ManagedProcess(
            name="pynetdicom floor",
            command=[
                sys.executable,
                "-m",
                "bench.pynetdicom_floor",
                "--port",
                str(self.port),
                "--calling-ae",
                CALLING_AE,
                "--counter",
                str(self.counter),
            ],
            env={key: value for key, value in os.environ.items() if not key.startswith("PACSVLM_")},
            log_path=workdir / "floor.log",
            cwd=REPO,
        )

    def start(self) -> None:  # noqa: D102
        self.server.start()
        wait_until(lambda: port_open(self.port), "open DICOM port", self.server)

    def stop(self) -> None:  # noqa: D102
        self.server.stop()

    def clear(self) -> None:  # noqa: D102
        self.counter.write_bytes(b"")

    def count(self) -> int:  # noqa: D102
        return self.counter.stat().st_size

    def log_tail(self) -> str:  # noqa: D102
        return self.server.log_tail()


class BaselineListener(OurListener):
    """Our listener run from another checkout (``--baseline``): the tree before a change, in the same rounds."""

    name = "ours-baseline"
    #: The checkout it runs from (set by ``--baseline``).
    checkout = REPO

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.server.cwd = self.checkout  # ``python -m worker.cli`` imports the checkout's packages first


RECEIVERS: tuple[type[Receiver], ...] = (StoreSCP, Orthanc, OurListener, PynetdicomFloor)


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
    from integration.dicom.samples import write_ct_series

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
