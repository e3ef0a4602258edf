"""What the tests read back: database rows and the analysis messages in the broker."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from sqlalchemy import create_engine, text


def db_rows(url: str, sql: str, **params: object) -> list[tuple[Any, ...]]:
    """Run one query on a fresh engine (the listener under test owns its own) and return plain tuples."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def decode_message(raw: bytes | str) -> dict[str, Any]:
    """A kombu JSON envelope with the Celery body's ``args`` and ``kwargs`` decoded."""
    message: dict[str, Any] = json.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    message["args"], message["kwargs"], _embed = json.loads(body)
    return message


def queued_messages(redis_url: str, queue: str = "analysis") -> list[dict[str, Any]]:
    """The messages waiting in a Redis-backed Celery queue, decoded."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [decode_message(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()
