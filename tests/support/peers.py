"""Real processes the tests talk to: our listener (``pacs-vlm listen``) and dcmtk's storescu."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import free_port, stop_process, wait_for_port

REPO = Path(__file__).resolve().parents[2]
STORESCU = "/usr/bin/storescu"  # dcmtk's, not pynetdicom's console script of the same name
SCU_AE = "STORESCU"


@dataclass
class ListenerProcess:
    """``pacs-vlm listen`` in a subprocess with its own settings, data folder and port."""

    data_dir: Path
    database_url: str
    broker_url: str
    calling_aes: dict[str, dict[str, object]] = field(default_factory=lambda: {SCU_AE: {}, "ORTHANC": {}})
    stable_seconds: float = 1.0
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    ae_title: str = "PACSVLM"
    #: How to start it: the checkout's code by default; the packaging test runs an installed console script.
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "worker.cli", "listen"])
    cwd: Path = REPO
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
        env.update(
            PACSVLM_DATA_DIR=str(self.data_dir),
            PACSVLM_DATABASE_URL=self.database_url,
            PACSVLM_BROKER_URL=self.broker_url,
            PACSVLM_CALLING_AES=json.dumps(self.calling_aes),
            PACSVLM_LISTEN_HOST="127.0.0.1",
            PACSVLM_LISTEN_PORT=str(self.port),
            PACSVLM_AE_TITLE=self.ae_title,
            PACSVLM_STABLE_SECONDS=str(self.stable_seconds),
            PACSVLM_ASSEMBLY_INTERVAL="0.2",
            PACSVLM_MIN_FREE_BYTES="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> ListenerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "listener.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=60)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"listener did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    @property
    def instance_root(self) -> Path:
        return self.data_dir / "instances"

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.instance_root.rglob("*.dcm"))

    def partial_files(self) -> list[Path]:
        """Temporary files holding data: the store also keeps a few empty ones ready, which are not partial."""
        return sorted(path for path in (self.instance_root / ".incoming").glob("*") if path.stat().st_size > 0)


@dataclass
class WorkerProcess:
    """``pacs-vlm worker`` in a subprocess, sharing a listener's data folder, database and broker."""

    data_dir: Path
    database_url: str
    broker_url: str
    model_dir: Path | None
    extra_env: dict[str, str] = field(default_factory=dict)
    queues: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
        env.update(
            PACSVLM_DATA_DIR=str(self.data_dir),
            PACSVLM_DATABASE_URL=self.database_url,
            PACSVLM_BROKER_URL=self.broker_url,
            PACSVLM_MODEL=str(self.model_dir or ""),
            PACSVLM_MODEL_DEVICE="cpu",
            PACSVLM_MAX_NEW_TOKENS="16",
            PACSVLM_IMAGE_SIZE="128",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"worker-{len(list(self.data_dir.glob('worker-*.log')))}.log"
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "worker.cli", "worker", "--log-level", "info"]
        if self.queues:
            command += ["--queues", self.queues]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def retry_dead_letters(self) -> None:
        """Run ``pacs-vlm deliveries retry --dead-letters`` with this worker's settings (as an operator would)."""
        env = {k: v for k, v in self.env().items() if k != "PYTHONUNBUFFERED"}
        retried = subprocess.run(
            [sys.executable, "-m", "worker.cli", "deliveries", "retry", "--dead-letters"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert retried.returncode == 0, retried.stderr

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = SCU_AE,
    called_ae: str = "PACSVLM",
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's storescu (TCP_NODELAY on, 128 KB PDUs, one association)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [
        STORESCU,
        "--max-pdu",
        "131072",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


#: storescu's option that proposes a file's compressed transfer syntax (plus the uncompressed ones).
_PROPOSE = {
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "-xs",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated
}


def transfer_syntax_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def storescu_each_syntax(port: int, files: Sequence[Path], **kwargs: object) -> list[subprocess.CompletedProcess[str]]:
    """Send files grouped by transfer syntax, one storescu association per group, without transcoding."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(_PROPOSE.get(transfer_syntax_of(path), "-xe"), []).append(path)
    return [storescu(port, group, extra=[flag], **kwargs) for flag, group in groups.items()]  # type: ignore[arg-type]
