"""The storage SCPs that ``bench.ingest`` times, each started once, emptied before each send, stopped at the end.

dcmtk storescp, Orthanc, our listener (from this tree and, with ``--baseline``, from another checkout) and
the pynetdicom floor.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.processes import (
    BROKER_URL,
    CALLING_AE,
    HOST,
    MAX_PDU,
    ORTHANC,
    POSTGRES_ADMIN_DSN,
    POSTGRES_URL,
    REPO,
    STORESCP,
    BenchError,
    ManagedProcess,
    free_port,
    port_open,
    wait_until,
)


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
