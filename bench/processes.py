"""Processes and ports of the benchmarks: the tools and services they use, and a managed child process.

Shared by ``bench.ingest``, ``bench.load``, ``bench.hostile``, ``bench.fuzz`` and ``bench.large_instance``
(through ``bench.ingest``'s names, which stay importable there).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

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
