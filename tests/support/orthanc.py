"""Debian's Orthanc as a real peer: a subprocess with its own configuration, ports and storage.

The tests use it as the hospital's PACS: files are uploaded over its REST API and
Orthanc sends them to our listener with C-STORE (``/modalities/<name>/store``).
Only the standard library talks to it (``urllib``), so no test dependency is added.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.services import free_port, stop_process

ORTHANC = "/usr/sbin/Orthanc"
#: Debian's orthanc-dicomweb package installs the plugin here.
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancError(RuntimeError):
    """Orthanc did not start, or answered a REST call with an error."""


class OrthancServer:
    """One Orthanc process with a JSON configuration in its own temporary folder.

    Parameters
    ----------
    modalities : dict
        ``DicomModalities``: name -> ``[AE title, host, port]``.
    plugins : sequence of str
        Plugin libraries to load (for example :data:`DICOMWEB_PLUGIN`); none by default.
    aet : str
        Orthanc's own AE title.
    folder : pathlib.Path, optional
        Where configuration, storage, index and log go; a temporary folder (removed on stop) when omitted.
    extra_config : dict, optional
        More configuration keys, merged over the defaults.
    """

    def __init__(
        self,
        modalities: dict[str, list[Any]] | None = None,
        *,
        plugins: Sequence[str] = (),
        aet: str = "ORTHANC",
        folder: Path | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.owns_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="pacsvlm-orthanc-")) if folder is None else folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = aet
        self.config_path = self.folder / "orthanc.json"
        self.log_path = self.folder / "orthanc.log"
        self.config: dict[str, Any] = {
            "Name": "pacs-vlm-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomModalities": modalities or {},
            "Plugins": list(plugins),
            "DicomScuTimeout": 30,
            "StableAge": 60,
        }
        if plugins and DICOMWEB_PLUGIN in plugins:
            self.config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        self.config.update(extra_config or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> OrthancServer:
        """Start Orthanc and wait until ``/system`` answers."""
        for plugin in self.config["Plugins"]:
            if not Path(plugin).is_file():
                raise OrthancError(f"Orthanc plugin not installed: {plugin}")
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC, "--verbose", str(self.config_path)],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise OrthancError(f"Orthanc exited with code {code} on start:\n{self.log()}")
            try:
                self.get("/system")
                return self
            except (OSError, OrthancError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise OrthancError(f"Orthanc's REST API did not answer after {timeout} s:\n{self.log()}") from None
                time.sleep(0.1)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        """Orthanc's log so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, timeout: float = 300
    ) -> Any:
        """Call the REST API and return the decoded JSON answer (or raw bytes when it is not JSON)."""
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                payload = response.read()
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise OrthancError(
                f"Orthanc {method} {path} answered HTTP {error.code}: {detail}\n--- Orthanc log ---\n{self.log()}"
            ) from None
        if "json" in kind:
            return json.loads(payload)
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path, timeout=10)

    def post_json(self, path: str, payload: Any) -> Any:
        return self.request("POST", path, json.dumps(payload).encode(), "application/json")

    def upload(self, path: Path) -> dict[str, Any]:
        """POST one DICOM file to ``/instances``; return Orthanc's answer (``ID``, ``ParentStudy``, ``Status``...)."""
        answer: dict[str, Any] = self.request("POST", "/instances", Path(path).read_bytes(), "application/dicom")
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"Orthanc refused {path}: {answer}\n--- Orthanc log ---\n{self.log()}")
        return answer

    def store_to_modality(self, modality: str, resource_ids: Sequence[str]) -> Any:
        """Send resources (patients, studies, series or instances by Orthanc id) to a modality with C-STORE."""
        return self.post_json(f"/modalities/{modality}/store", {"Resources": list(resource_ids), "Synchronous": True})

    def studies(self) -> list[str]:
        """Orthanc ids of the studies it holds."""
        return list(self.get("/studies"))

    def study(self, orthanc_id: str) -> dict[str, Any]:
        return dict(self.get(f"/studies/{orthanc_id}"))

    def study_instances(self, orthanc_id: str) -> list[dict[str, Any]]:
        """The instances of one study (each with ``ID`` and ``MainDicomTags``)."""
        return list(self.get(f"/studies/{orthanc_id}/instances"))

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL) and remove its temporary folder."""
        stop_process(self.process)
        self.process = None
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
