"""The wheel, installed as the container image installs it, runs every first step without the checkout.

Built with the project's uv, installed with pip into a fresh venv outside the repository from the locked
requirements (hash-checked, no resolution) and then the wheel without dependencies: the Dockerfile's
``edge`` image steps. The installed ``pacs-vlm`` then shows its help, migrates a new SQLite database
(alembic.ini and the revisions are package data) and answers a C-ECHO from dcmtk's ``echoscu``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.store.migrate import head_revision
from tests.support.peers import ListenerProcess
from tests.test_lock import ROOT, uv

ECHOSCU = "/usr/bin/echoscu"

pytestmark = pytest.mark.slow


@dataclass
class Installed:
    """A venv holding the installed wheel, and a folder outside the checkout to run it in."""

    venv: Path
    work: Path

    def run(self, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("PACSVLM_", "PYTHON", "VIRTUAL_ENV"))}
        environment.update(PACSVLM_DATA_DIR=str(self.work / "var"), COLUMNS="200", NO_COLOR="1", TERM="dumb", **env)
        return subprocess.run(
            args, cwd=self.work, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )

    def pacs_vlm(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "pacs-vlm"), *args, **env)


def checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    dist = tmp_path_factory.mktemp("dist")
    checked(uv("build", "--wheel", "--out-dir", str(dist)))
    [wheel] = dist.glob("pacs_vlm-*.whl")
    requirements = dist / "requirements.txt"
    checked(uv("export", "--frozen", "--no-emit-project", "--no-header", "-o", str(requirements)))

    venv = tmp_path_factory.mktemp("venv")
    work = tmp_path_factory.mktemp("work")
    assert not venv.is_relative_to(ROOT) and not work.is_relative_to(ROOT)
    site = Installed(venv, work)
    checked(site.run(sys.executable, "-m", "venv", "--clear", str(venv)))
    pip = str(venv / "bin" / "pip")
    checked(site.run(pip, "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(requirements), timeout=900))
    checked(site.run(pip, "install", "--quiet", "--no-deps", str(wheel)))
    assert unexplained_conflicts(site.run(pip, "check")) == []
    yield site


def unexplained_conflicts(result: subprocess.CompletedProcess[str]) -> list[str]:
    """``pip check``'s complaints, less those the lock's ``override-dependencies`` explain (pyproject says why)."""
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"].get("override-dependencies", [])
    overridden = {re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower() for spec in overrides}
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return [
        line
        for line in lines
        if not (match := re.search(r"but you have (\S+) ", line)) or match.group(1).lower() not in overridden
    ]


def test_the_wheel_installs_as_package_files_not_a_link_to_the_checkout(installed: Installed) -> None:
    code = "import integration.store.migrate as m; print(m.__file__); print(m.ALEMBIC_INI)"
    module, ini = checked(installed.run(str(installed.venv / "bin" / "python"), "-c", code)).stdout.split()
    assert Path(module).is_relative_to(installed.venv) and Path(ini).is_relative_to(installed.venv)
    assert Path(ini).is_file()
    revisions = sorted(p.name for p in (Path(ini).parent / "migrations" / "versions").glob("*.py"))
    assert revisions == sorted(p.name for p in (ROOT / "integration/store/migrations/versions").glob("*.py"))


def test_the_installed_command_shows_its_help(installed: Installed) -> None:
    result = checked(installed.pacs_vlm("--help"))
    for command in ("listen", "worker", "api", "db", "demo"):
        assert command in result.stdout, command
    assert "Traceback" not in result.stderr


def test_db_upgrade_migrates_a_new_sqlite_file_to_head(installed: Installed) -> None:
    database = installed.work / "new.sqlite"
    url = f"sqlite:///{database}"
    assert not database.exists()
    checked(installed.pacs_vlm("db", "upgrade", PACSVLM_DATABASE_URL=url))
    assert database.is_file()
    current = checked(installed.pacs_vlm("db", "current", PACSVLM_DATABASE_URL=url))
    head = head_revision()
    assert head and head in current.stdout


def test_listen_answers_a_c_echo_from_echoscu(installed: Installed) -> None:
    listener = ListenerProcess(
        installed.work / "listener",
        f"sqlite:///{installed.work / 'listener.sqlite'}",
        "filesystem://",
        calling_aes={"ECHOSCU": {}},
        command=[str(installed.venv / "bin" / "pacs-vlm"), "listen"],
        cwd=installed.work,
    )
    checked(installed.pacs_vlm("db", "upgrade", PACSVLM_DATABASE_URL=listener.database_url))
    listener.start()
    try:
        echo = installed.run(ECHOSCU, "-aet", "ECHOSCU", "-aec", "PACSVLM", "127.0.0.1", str(listener.port))
        assert echo.returncode == 0, echo.stdout + echo.stderr + listener.log()
        refused = installed.run(ECHOSCU, "-aet", "STRANGER", "-aec", "PACSVLM", "127.0.0.1", str(listener.port))
        assert refused.returncode != 0  # the allowlist holds in the installed build too
    finally:
        listener.stop()
    assert "Traceback" not in listener.log()
