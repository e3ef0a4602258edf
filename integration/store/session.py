"""Engines and sessions, built lazily from the settings (no import-time side effects)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


def dialect_insert(session: Session) -> Any:
    """Return the session's dialect's ``insert`` (PostgreSQL's or SQLite's): both offer ``on_conflict_do_nothing``."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: Engines by URL, newest use last; at most :data:`_MOST_ENGINES`, the least recently used disposed beyond that.
_engines: OrderedDict[str, Engine] = OrderedDict()
_engines_lock = threading.Lock()
_MOST_ENGINES = 8


def engine_for(url: str) -> Engine:
    """Return the (cached) engine for a database URL (an engine pushed out of the cache closes its pool)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is not None:
            _engines.move_to_end(url)
            return engine
        engine = _engines[url] = _create_engine(url)
        if len(_engines) > _MOST_ENGINES:
            _, oldest = _engines.popitem(last=False)
            oldest.dispose()
        return engine


def dispose_engines() -> None:
    """Close every cached engine's pooled connections and forget the engines (a test's databases, once done)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
        _factory.cache_clear()
    for engine in engines:
        engine.dispose()


def _create_engine(url: str) -> Engine:
    """Build the engine for a database URL.

    SQLite files get WAL with ``synchronous=FULL`` so a commit is durable.
    Connections are not pinged before use (a round trip per checkout is too
    dear on the C-STORE path); a connection that a database restart broke is
    invalidated by SQLAlchemy on first use, and :func:`run_with_reconnect`
    retries once on a fresh one.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": 5, "application_name": "pacs-vlm"}
    return create_engine(url, pool_size=20, max_overflow=10, connect_args=connect_args)


@lru_cache(maxsize=8)
def _factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """Open one use case's transaction: a session that commits once on success and rolls back on error."""
    session = _factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def run_with_reconnect(url: str, work: Callable[[Connection], T]) -> T:
    """Run ``work`` on a pooled connection, retrying once if that connection was dead; return its result.

    ``work`` receives an open connection and commits or rolls back itself.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database stays unreachable or the work fails otherwise.
    """
    for attempt in (1, 2):
        try:
            with engine_for(url).connect() as connection:
                return work(connection)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")
