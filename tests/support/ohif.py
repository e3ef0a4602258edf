"""OHIF Viewer v3 as a real peer: its prebuilt release from npm, served as static files.

npm's ``@ohif/app`` package ships the viewer's production build in ``dist/`` (``index.html``,
``app-config.js``, the app bundle and its chunks); no build step is needed. :func:`install_ohif` fetches
that tarball once with ``npm pack`` into a cache folder outside the repository, and :class:`OhifServer`
serves it with our own ``app-config.js`` (one DICOMweb data source), answering the single-page app's
routes with ``index.html``. The viewer reads the DICOMweb server from its own origin, so that server must
allow OHIF's origin (CORS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: The npm package and release the tests serve (the newest v3 release when this was written).
OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
#: Where the release is unpacked, unless ``PACSVLM_TEST_OHIF_CACHE`` names another folder.
DEFAULT_CACHE = Path.home() / ".cache" / "pacs-vlm" / "ohif"


class OhifUnavailable(RuntimeError):
    """The OHIF release could not be fetched (no npm, or the registry did not answer)."""


def cache_folder() -> Path:
    return Path(os.environ.get("PACSVLM_TEST_OHIF_CACHE", DEFAULT_CACHE))


def install_ohif(cache: Path | None = None, version: str = OHIF_VERSION, timeout: float = 600) -> Path:
    """Return the folder holding the release's ``index.html``, fetching it with ``npm pack`` first if needed.

    Raises
    ------
    OhifUnavailable
        When npm is missing, ``npm pack`` fails, or the tarball holds no ``dist/index.html``.
    """
    target = (cache or cache_folder()) / version / "dist"
    if (target / "index.html").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise OhifUnavailable("npm is not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        try:
            done = subprocess.run(
                [npm, "pack", f"{OHIF_PACKAGE}@{version}", "--pack-destination", scratch, "--silent"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=scratch,
            )
        except subprocess.TimeoutExpired:
            raise OhifUnavailable(f"npm pack {OHIF_PACKAGE}@{version} took over {timeout} s") from None
        tarballs = list(Path(scratch).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise OhifUnavailable(f"npm pack {OHIF_PACKAGE}@{version} failed: {done.stderr.strip()[-500:]}")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
            tar.extractall(unpacked, members=members, filter="data")
        built = unpacked / "package" / "dist"
        if not (built / "index.html").is_file():
            raise OhifUnavailable(f"{OHIF_PACKAGE}@{version} holds no dist/index.html")
        if not target.exists():
            built.rename(target)
    return target


def app_config(qido_wado_root: str, *, name: str = "pacs-vlm") -> str:
    """An ``app-config.js`` with one DICOMweb data source at ``qido_wado_root`` (no static-WADO shortcuts)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": name,
            "name": name,
            "wadoUriRoot": qido_wado_root,
            "qidoRoot": qido_wado_root,
            "wadoRoot": qido_wado_root,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class OhifServer:
    """The OHIF release served on ``127.0.0.1`` by a threaded ``http.server``.

    Parameters
    ----------
    dist : pathlib.Path
        The release's static files (:func:`install_ohif`).
    config : str
        The ``app-config.js`` to answer with (:func:`app_config`).

    The port is bound on construction (:attr:`url` is known before :meth:`__enter__` starts serving), and
    :attr:`config` may be replaced until then.
    """

    def __init__(self, dist: Path, config: str) -> None:
        self.dist = dist
        self.config = config.encode()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, name="ohif-static", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OhifServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def _handler(self) -> type[SimpleHTTPRequestHandler]:
        owner = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(owner.dist), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/app-config.js":
                    self._answer(200, "application/javascript", owner.config)
                elif path != "/" and (owner.dist / path.lstrip("/")).is_file():
                    super().do_GET()
                else:  # the single-page app's own routes (/viewer, /segmentation...)
                    self._answer(200, "text/html", (owner.dist / "index.html").read_bytes())

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
