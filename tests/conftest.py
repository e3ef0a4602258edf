"""Shared fixtures: real PostgreSQL, Redis and listener processes, and the PACS holding prior studies."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.model_server import TransformersServe
from tests.support.peers import ListenerProcess, WorkerProcess
from tests.support.services import Postgres, RedisServer, machine_redis, start_postgres

#: Fixtures defined beside their peers: ``prior_pacs`` (Orthanc holding prior studies, one per session).
pytest_plugins = ["tests.support.priors"]

#: Redis database indexes the tests use on a shared server (flushed per test), one per pytest-xdist worker
#: (``gw0`` takes the first).  Modules with a database of their own use fixed ones outside this list (3-7, 13,
#: 14), so two workers never flush each other's.  ``PACSVLM_TEST_REDIS_DB`` (``15`` or ``15,2``) overrides it.
TEST_REDIS_DBS = tuple(int(db) for db in os.environ.get("PACSVLM_TEST_REDIS_DB", "15,12,11,10").split(","))


def _worker_redis_db() -> int:
    """The Redis database of this pytest process: by its xdist worker number (``gw1`` -> the second)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    if index >= len(TEST_REDIS_DBS):
        raise RuntimeError(f"no test Redis database for xdist worker {worker}: list more in PACSVLM_TEST_REDIS_DB")
    return TEST_REDIS_DBS[index]


TEST_REDIS_DB = _worker_redis_db()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PACSVLM_* variable of the caller's shell leaks into a test; settings are read afresh."""
    from integration.config import install_settings

    for name in list(os.environ):
        if name.upper().startswith("PACSVLM_") and not name.upper().startswith("PACSVLM_TEST_"):
            monkeypatch.delenv(name)
    install_settings(None)


@pytest.fixture(autouse=True)
def close_database_pools() -> Iterator[None]:
    """After each test, this process's pooled database connections are closed: two test processes with their
    api, listener and worker children stay well below PostgreSQL's ``max_connections`` (100 by default)."""
    from integration.store.session import dispose_engines

    yield
    dispose_engines()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database()


@pytest.fixture
def migrated_postgres_url(postgres_url: str) -> str:
    from integration.store.migrate import upgrade

    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = machine_redis()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A flushed Redis database for one test (the broker in production configuration)."""
    url = redis_server.url(TEST_REDIS_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def listener_factory(tmp_path: Path) -> Iterator[Callable[..., ListenerProcess]]:
    """Start ``pacs-vlm listen`` subprocesses; all are stopped after the test."""
    started: list[ListenerProcess] = []

    def start(database_url: str, broker_url: str, **kwargs: object) -> ListenerProcess:
        data_dir = kwargs.pop("data_dir", None) or tmp_path / f"listener{len(started)}"
        process = ListenerProcess(data_dir=data_dir, database_url=database_url, broker_url=broker_url, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def listener(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str
) -> ListenerProcess:
    """Our listener in production configuration: PostgreSQL, Redis, durable writes."""
    return listener_factory(migrated_postgres_url, redis_url)


@pytest.fixture(scope="session")
def smoke_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised LLaVA checkpoint on disk, built once per test session."""
    from models.smoke import build_smoke_model

    return build_smoke_model("llava", tmp_path_factory.mktemp("smoke-llava") / "model")


@pytest.fixture(scope="session")
def smoke_model_server(smoke_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersServe]:
    """``transformers serve`` on the tiny LLaVA, one per test session (a start costs the better part of a minute).

    Tests may stop and start it again (the restart test does); they leave it running.
    """
    serve = TransformersServe(smoke_model_dir, tmp_path_factory.mktemp("serve")).start()
    yield serve
    serve.stop()


@pytest.fixture(scope="session")
def smoke_medgemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised MedGemma (Gemma 3) checkpoint: a multi-image family, built once per session."""
    from models.smoke import build_smoke_model

    return build_smoke_model("medgemma", tmp_path_factory.mktemp("smoke-medgemma") / "model")


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``pacs-vlm worker`` subprocesses; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(
        data_dir: Path, database_url: str, broker_url: str, model_dir: Path | None, **kwargs: object
    ) -> WorkerProcess:
        process = WorkerProcess(data_dir, database_url, broker_url, model_dir, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
