"""``pacs-vlm api`` as a real process for the web tests, and its fixture; headless Chromium for the browser tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import free_port, stop_process, wait_for_port

REPO = Path(__file__).resolve().parents[2]
#: The browser the browser tests drive (Debian package chromium), through Playwright.
CHROMIUM = "/usr/bin/chromium"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class ApiProcess:
    """``pacs-vlm api`` in a subprocess on a free port."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"api-{self.port}.log"

    def start(self) -> ApiProcess:
        self.process = run_api(self.data_dir, self.env, "--port", str(self.port), log=self.log_path)
        try:
            wait_for_port("127.0.0.1", self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"api did not start:\n{self.log_path.read_text(errors='replace')}") from None
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def samples(self) -> Samples:
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def run_api(data_dir: Path, env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    full_env.update(PACSVLM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "api", *args],
        cwd=REPO,
        env=full_env,
        stdout=log.open("ab") if log else subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    started: list[ApiProcess] = []

    def start(**env: str) -> ApiProcess:
        api = ApiProcess(tmp_path / f"api{len(started)}", {"PACSVLM_MIN_FREE_BYTES": "0", **env})
        started.append(api)
        return api.start()

    yield start
    for api in started:
        api.stop()


def sign_in_form_token(client: httpx.Client) -> str:
    """Open the sign-in form as a browser would (its CSRF cookie kept by the client) and return its token."""
    import re

    page = client.get("/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, f"no CSRF token in the sign-in form ({page.status_code})"
    return found.group(1)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for a module's browser tests (each test opens its own context); skips without it."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()
