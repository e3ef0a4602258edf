"""uv.lock pins every dependency, agrees with pyproject.toml, and is what the test environment holds.

The checks run the project's own uv (``.uv/bin/uv``, bootstrapped by ``make venv`` at the version that
``[tool.uv] required-version`` names), as CI and the Dockerfile do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".uv" / "bin" / "uv"
#: The extras `make venv` installs (Makefile, EXTRAS).
TEST_EXTRAS = ("models", "cpu", "dev")


def uv(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    if not UV.exists():
        pytest.fail(f"{UV} is missing: run 'make venv' (it installs the uv that pyproject.toml requires)")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    environment.update(UV_PYTHON_DOWNLOADS="never", NO_COLOR="1", **env)
    command = [str(UV), *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


def lock() -> dict[str, Any]:
    with (ROOT / "uv.lock").open("rb") as handle:
        return tomllib.load(handle)


def test_the_lock_agrees_with_pyproject() -> None:
    result = uv("lock", "--locked", "--python", sys.executable)
    assert result.returncode == 0, result.stderr


def test_a_dependency_the_lock_lacks_is_refused(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    assert '    "rich>=13",\n' in text
    pyproject.write_text(text.replace('    "rich>=13",\n', '    "rich>=13",\n    "six>=1.16",\n'))
    before = (tmp_path / "uv.lock").read_bytes()

    result = uv("lock", "--locked", "--python", sys.executable, cwd=tmp_path)

    assert result.returncode != 0
    assert "needs to be updated" in result.stderr and "--locked" in result.stderr, result.stderr
    assert (tmp_path / "uv.lock").read_bytes() == before  # a check never rewrites the lock


def test_the_test_environment_is_exactly_the_lock() -> None:
    extras = [arg for extra in TEST_EXTRAS for arg in ("--extra", extra)]
    result = uv("sync", "--locked", "--check", *extras, UV_PROJECT_ENVIRONMENT=sys.prefix)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_is_pinned_with_hashes() -> None:
    packages = lock()["package"]
    assert len(packages) > 100
    unhashed = []
    for package in packages:
        if package["name"] == "pacs-vlm":
            assert package["source"] == {"editable": "."}
            continue
        assert package["version"], package["name"]
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, f"{package['name']} has no file in the lock"
        for file in files:
            if "hash" in file:
                assert file["hash"].startswith("sha256:"), (package["name"], file)
            else:
                unhashed.append(f"{package['name']}=={package['version']}")
    # uv records no hash for a wheel of a local folder: only the machines' own CPU torch is one.
    assert unhashed == ["torch==2.13.0+cpu"]


def test_both_torch_builds_are_locked_at_one_version() -> None:
    torches = {p["version"]: p for p in lock()["package"] if p["name"] == "torch"}
    assert set(torches) == {"2.13.0", "2.13.0+cpu"}
    assert torches["2.13.0+cpu"]["source"] == {"registry": "/opt/wheels"}  # the CPU build of these machines
    assert torches["2.13.0"]["source"] == {"registry": "https://pypi.org/simple"}  # the CUDA build of GPU hosts
    cuda_deps = {d["name"] for d in torches["2.13.0"]["dependencies"]}
    assert "triton" in cuda_deps and any(name.startswith("nvidia-") for name in cuda_deps)
    assert not any(d["name"].startswith("nvidia-") for d in torches["2.13.0+cpu"]["dependencies"])


def test_make_and_the_dockerfile_use_the_lock_and_the_required_uv() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = pyproject["tool"]["uv"]["required-version"]
    version = uv("--version").stdout.split()[1]
    assert required == f"=={version}"
    makefile = (ROOT / "Makefile").read_text()
    assert "sync --locked" in makefile and "pip install" not in makefile.replace("pip install --quiet uv==", "")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "uv export --quiet --frozen" in dockerfile and "--require-hashes" in dockerfile
    assert "--editable" not in dockerfile and " -e " not in dockerfile
