"""Real PostgreSQL and Redis for the tests: the machine's, or throwaway local ones.

The machine's servers (127.0.0.1:5432 trust auth, 127.0.0.1:6379) are used when
they answer; otherwise a PostgreSQL cluster (``initdb``) and a ``redis-server``
are started in a temporary folder on free ports and stopped at the end.
``PACSVLM_TEST_POSTGRES_URL`` and ``PACSVLM_TEST_REDIS_URL`` override both.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM a child process, SIGKILL it if it has not ended after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Postgres:
    """A PostgreSQL server the tests may create databases on."""

    host: str
    port: int
    user: str
    process: subprocess.Popen[bytes] | None = None
    folder: Path | None = None
    databases: list[str] = field(default_factory=list)

    def admin_dsn(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname=postgres"

    def create_database(self) -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        name = f"pacsvlm_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{name}"

    def close(self) -> None:
        try:
            with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
                for name in self.databases:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass
        stop_process(self.process)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> Postgres:
    override = os.environ.get("PACSVLM_TEST_POSTGRES_URL")
    if override:
        from sqlalchemy.engine import make_url

        url = make_url(override)
        return Postgres(url.host or "127.0.0.1", url.port or 5432, url.username or "postgres")
    if port_open("127.0.0.1", 5432):
        return Postgres("127.0.0.1", 5432, "postgres")
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        raise RuntimeError("no PostgreSQL on 127.0.0.1:5432 and no initdb to start one (apt-get install postgresql)")
    bindir = Path(binaries[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="pacsvlm-pg-"))
    user = "postgres"
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", user, "-A", "trust"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            *run_as,
            str(bindir / "postgres"),
            "-D",
            str(folder / "data"),
            "-p",
            str(port),
            "-k",
            str(folder),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port)
    return Postgres("127.0.0.1", port, user, process, folder)


@dataclass
class RedisServer:
    """A Redis server; ``restart`` only works for one this module started."""

    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def close(self) -> None:
        stop_process(self.process)


def start_redis(port: int | None = None) -> RedisServer:
    """Start a throwaway redis-server without persistence on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port)
    return RedisServer("127.0.0.1", port, process)


def machine_redis() -> RedisServer:
    override = os.environ.get("PACSVLM_TEST_REDIS_URL")
    if override:
        from urllib.parse import urlparse

        parsed = urlparse(override)
        return RedisServer(parsed.hostname or "127.0.0.1", parsed.port or 6379)
    if port_open("127.0.0.1", 6379):
        return RedisServer("127.0.0.1", 6379)
    return start_redis()
