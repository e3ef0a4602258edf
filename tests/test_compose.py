"""docker-compose.yml is valid and wires the processes of the design together.

No Docker engine is needed: ``docker-compose config`` validates and resolves the file
(anchors, merges, defaults); the test then reads the resolved YAML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
PACSVLM_SERVICES = ("migrate", "listener", "api", "worker", "delivery", "worker-vllm")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (make system-deps installs it)")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    assert isinstance(resolved, dict)
    return resolved


def as_list(value: str | list[str]) -> list[str]:
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def test_every_process_of_the_design_is_a_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", *PACSVLM_SERVICES, "vllm"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in as_list(services["redis"]["command"])
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"


def test_migrate_runs_db_upgrade_once(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert as_list(migrate["command"])[-2:] == ["db", "upgrade"]
    assert migrate["build"]["dockerfile"] == "Dockerfile"
    assert str(migrate.get("restart", "no")) == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_listener_starts_after_migrations_and_redis(compose: dict[str, Any]) -> None:
    listener = compose["services"]["listener"]
    assert as_list(listener["command"]) == ["listen"]
    assert listener["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert listener["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(int(p["published"]) == 11112 and int(p["target"]) == 11112 for p in listener["ports"])


def test_worker_reserves_a_gpu_and_shares_storage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    assert as_list(worker["command"]) == ["worker", "--queues", "analysis.stat,analysis"]
    assert as_list(services["delivery"]["command"]) == ["worker", "--queues", "delivery"]
    assert "deploy" not in services["delivery"]  # deliveries need no GPU
    devices = gpu_devices(worker)
    assert len(devices) == 1 and int(devices[0]["count"]) == 1
    storage = {v.split(":")[0] for v in services["listener"]["volumes"] if v.split(":")[1] == "/var/lib/pacs-vlm"}
    assert storage, "the listener has no volume at /var/lib/pacs-vlm"
    for name in ("worker", "api", "delivery"):
        assert any(v.startswith(f"{next(iter(storage))}:/var/lib/pacs-vlm") for v in services[name]["volumes"]), name


def test_pacsvlm_services_share_production_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in PACSVLM_SERVICES:
        env = services[name]["environment"]
        assert (
            env["PACSVLM_DATABASE_URL"].startswith("postgresql+psycopg://")
            and "@postgres:5432/" in env["PACSVLM_DATABASE_URL"]
        ), name
        assert env["PACSVLM_BROKER_URL"] == "redis://redis:6379/0", name
        assert env["PACSVLM_DATA_DIR"] == "/var/lib/pacs-vlm", name


def test_the_model_worker_has_its_own_image_with_the_model_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    edge = [name for name in PACSVLM_SERVICES if name != "worker"]
    for name in edge:
        assert services[name]["build"]["target"] == "edge", name
        assert services[name]["image"] == services["migrate"]["image"], name
    worker = services["worker"]
    assert worker["build"]["target"] == "worker"
    assert worker["build"]["dockerfile"] == services["migrate"]["build"]["dockerfile"]
    assert worker["image"] != services["migrate"]["image"]
    dockerfile = (REPO / worker["build"]["dockerfile"]).read_text()
    assert "AS edge" in dockerfile and "FROM edge AS worker" in dockerfile
    worker_stage = dockerfile.split("FROM edge AS worker", 1)[1]
    assert "/tmp/dist/worker.txt" in worker_stage
    assert "--extra models --extra gpu -o /dist/worker.txt" in dockerfile


def test_calling_ae_example_is_valid_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from integration.config import Settings

    env = compose["services"]["listener"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.calling_aes, "the example allowlist is empty"
    assert not settings.accept_any_calling_ae


def test_vllm_is_optional_and_reserves_a_gpu(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["profiles"] == ["vllm"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", vllm["image"]), "pin vLLM to a release"
    assert len(gpu_devices(vllm)) == 1
    assert any(v.split(":")[1] == "/models" for v in vllm["volumes"])
    command = as_list(vllm["command"])
    for flag in ("--model", "--served-model-name", "--max-model-len", "--limit-mm-per-prompt"):
        assert flag in command, flag
    assert int(command[command.index("--max-model-len") + 1]) >= 4096
    assert json.loads(command[command.index("--limit-mm-per-prompt") + 1])["image"] >= 4
    assert vllm["healthcheck"]["test"], "the worker waits for vLLM's health check"


def test_vllm_worker_sends_the_default_model_to_the_vllm_service(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration.config import Settings
    from models.openai_backend import server_base

    services = compose["services"]
    worker, vllm = services["worker-vllm"], services["vllm"]
    assert worker["profiles"] == ["vllm"]
    assert as_list(worker["command"]) == as_list(services["worker"]["command"])  # the same queues
    assert not gpu_devices(worker) and "PACSVLM_MODEL" not in worker["environment"]
    assert worker["depends_on"]["vllm"]["condition"] == "service_healthy"
    for key, value in worker["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.model is None and settings.model_server_url is not None
    assert server_base(settings.model_server_url) == "http://vllm:8000"
    command = as_list(vllm["command"])
    assert settings.model_server_model == command[command.index("--served-model-name") + 1]
    assert "--port" in command and command[command.index("--port") + 1] == "8000"
    assert settings.model_server_trusted, "vLLM beside the worker is inside the trust boundary"
