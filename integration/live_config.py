"""The effective settings of a running process: the environment, with the database's configuration laid over it.

Calling AEs, destinations, routing rules and the model list of every seeded kind come from
``config_entries`` (see :mod:`integration.config_seed`); a kind not seeded yet keeps the process's
environment value, so a database that was never seeded behaves as before.  Prompt templates come from
``prompt_templates`` once seeded (the worker turns them into the models' templates).

Every process asks :func:`live_settings` where it used to read those fields of its settings.  A process
reads the single ``config_generation`` row (one primary-key SELECT) at most every ``config_poll_seconds``
and reads the rest again only when the number changed, so a change made on a page or with ``pacs-vlm
config`` reaches the listener and the workers within seconds, without a restart.  When the database cannot
be read the last good configuration stays (logged once); an entry that no longer validates (after an
upgrade) is left out with a log line naming its kind and name.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from integration.app_config import ConfigRefused, ModelEntry, PromptValue, check
from integration.config import CallingAE, Settings
from integration.destinations import Destination
from integration.imaging.routing import RoutingRule
from integration.store import app_config as rows
from integration.store.config_tables import PROMPT_KIND, ConfigGeneration, ConfigKind
from integration.store.opinions import BUILTIN_PROMPT_NAMES
from integration.store.session import session_scope

log = logging.getLogger(__name__)

#: Seconds before a process that could not read the configuration tries again (a database that is away is not
#: asked every poll: the listener's admission would wait for each connect timeout).
RETRY_AFTER_FAILURE_SECONDS = 30.0


@dataclass(frozen=True)
class LiveSnapshot:
    """The configuration in force at one generation.

    Attributes
    ----------
    generation : int
        The ``config_generation`` number it was read at (-1: never read, the environment's).
    settings : Settings
        The effective settings.
    prompts : tuple of PromptValue or None
        The current prompt templates, in the order they are tried; None while prompts are not seeded
        (the built-in templates apply).
    seeded : frozenset of str
        The kinds the database holds (seeded); the others are the environment's.
    """

    generation: int
    settings: Settings
    prompts: tuple[PromptValue, ...] | None
    seeded: frozenset[str] = frozenset()


def _entries(session: Session, kind: ConfigKind) -> list[tuple[str, BaseModel]]:
    values = []
    for entry in rows.list_entries(session, kind):
        try:
            values.append((entry.name, check(kind, entry.name, entry.document)))
        except ConfigRefused as error:
            log.warning("configuration entry skipped: %s %r no longer validates: %s", kind.value, entry.name, error)
    return values


def read_snapshot(session: Session, base: Settings, generation: int, seeded: set[str]) -> LiveSnapshot:
    """Return the configuration of ``base`` with the database's seeded kinds laid over it."""
    update: dict[str, object] = {}
    if ConfigKind.CALLING_AE.value in seeded:
        update["calling_aes"] = {
            name: value for name, value in _entries(session, ConfigKind.CALLING_AE) if isinstance(value, CallingAE)
        }
    if ConfigKind.DESTINATION.value in seeded:
        update["destinations"] = [v for _, v in _entries(session, ConfigKind.DESTINATION) if isinstance(v, Destination)]
    if ConfigKind.ROUTING_RULE.value in seeded:
        rules = [v for _, v in _entries(session, ConfigKind.ROUTING_RULE) if isinstance(v, RoutingRule)]
        update["routing_rules"] = rules or None  # no rule left: the built-in rules, as with the variable unset
    if ConfigKind.MODEL.value in seeded:
        models = _entries(session, ConfigKind.MODEL)
        update["models"] = {name: Path(value.path) for name, value in models if isinstance(value, ModelEntry)}
    prompts = None
    if PROMPT_KIND in seeded:
        prompts = tuple(
            PromptValue(row.name, row.version, row.modality, tuple(row.body_parts), row.task)
            for row in rows.current_prompts(session)
        )
    settings = base.model_copy(update=update) if update else base
    return LiveSnapshot(generation, settings, prompts, frozenset(seeded))


class LiveConfig:
    """The effective configuration of one base settings object, refreshed when the generation changes."""

    def __init__(self, base: Settings) -> None:
        self.base = base
        self._lock = threading.Lock()
        self._snapshot = LiveSnapshot(-1, base, None)
        self._checked_at = float("-inf")
        self._failing = False

    def snapshot(self) -> LiveSnapshot:
        """Return the configuration in force, polling the generation when ``config_poll_seconds`` have passed."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at < self.base.config_poll_seconds:
                return self._snapshot
            self._checked_at = now
            if not _database_exists(self.base.database_url):
                return self._snapshot  # an embedded database not created yet: nothing to lay over
            try:
                with session_scope(self.base.database_url) as session:
                    row = session.execute(
                        select(ConfigGeneration.generation, ConfigGeneration.seeded).where(ConfigGeneration.id == 1)
                    ).one_or_none()
                    generation, seeded = (row[0], row[1]) if row is not None else (0, "")
                    if generation != self._snapshot.generation:
                        kinds = {kind for kind in seeded.split(",") if kind}
                        self._snapshot = read_snapshot(session, self.base, generation, kinds)
                        if self._snapshot.generation >= 0 and kinds:
                            log.info("configuration generation %d in force", generation)
            except SQLAlchemyError as error:
                if not self._failing:
                    log.warning(
                        "configuration not read from the database (%s): the last good configuration stays",
                        type(error).__name__,
                    )
                self._failing = True
                self._checked_at = now + RETRY_AFTER_FAILURE_SECONDS - self.base.config_poll_seconds
                return self._snapshot
            if self._failing:
                log.info("configuration read from the database again")
                self._failing = False
            return self._snapshot

    def refresh(self) -> LiveSnapshot:
        """Poll now (a command that just changed the configuration, a test)."""
        with self._lock:
            self._checked_at = float("-inf")
        return self.snapshot()


def _database_exists(url: str) -> bool:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return True
    return Path(parsed.database).is_file()


_registry_lock = threading.Lock()
#: id of a base or effective Settings -> (that object, kept so its id is never reused; its LiveConfig).
_registry: dict[int, tuple[Settings, LiveConfig]] = {}


def live_config(settings: Settings) -> LiveConfig:
    """Return the process's live configuration of ``settings`` (a base, or an effective settings it gave out)."""
    with _registry_lock:
        known = _registry.get(id(settings))
        if known is not None and known[0] is settings:
            return known[1]
        live = LiveConfig(settings)
        _registry[id(settings)] = (settings, live)
        return live


def live_snapshot(settings: Settings) -> LiveSnapshot:
    """Return the configuration in force for ``settings``: see :class:`LiveSnapshot`."""
    live = live_config(settings)
    snapshot = live.snapshot()
    if snapshot.settings is not settings:
        with _registry_lock:  # the effective settings lead back to the same live configuration
            _registry.setdefault(id(snapshot.settings), (snapshot.settings, live))
    return snapshot


def prompt_names(settings: Settings) -> tuple[str, ...]:
    """Return the names of the prompt templates in force (a second opinion or re-analysis may name one)."""
    prompts = live_snapshot(settings).prompts
    return BUILTIN_PROMPT_NAMES if prompts is None else tuple(p.name for p in prompts)


def live_settings(settings: Settings) -> Settings:
    """Return the effective settings: ``settings`` with the database's calling AEs, destinations, rules, models."""
    return live_snapshot(settings).settings
