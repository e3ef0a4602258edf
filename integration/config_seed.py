"""The environment as the first configuration of a database: copied once per kind, then the database rules.

``PACSVLM_CALLING_AES``, ``PACSVLM_DESTINATIONS``, ``PACSVLM_ROUTING_RULES`` (the built-in rules when unset)
and ``PACSVLM_MODELS`` are copied into ``config_entries`` the first time a database is seeded, and the
built-in prompt templates into ``prompt_templates`` at their own version numbers.  Each kind is then marked
seeded, so a later start never copies it again: a destination an administrator deleted stays deleted, and a
kind emptied on purpose stays empty.  Secrets are not configuration: a destination keeps naming its
password file or variable.

The prompt templates are the models' data, which this layer may not import: the caller (the worker side,
``worker/config_seed.py``) hands them in as :class:`~integration.app_config.PromptValue` values.  Seeding
holds the generation row's lock, so two processes seeding a new database at once copy everything once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from integration.app_config import ConfigRefused, PromptValue, save
from integration.config import Settings
from integration.imaging.routing import DEFAULT_RULES
from integration.store import app_config as rows
from integration.store.config_tables import PROMPT_KIND, ConfigKind

log = logging.getLogger(__name__)

#: The seeded-kinds name of the prompt templates (the other kinds are ``ConfigKind`` values).
#: Audit actor of what the seed copies.
SEED_ACTOR = "seed:environment"


def environment_documents(settings: Settings) -> dict[ConfigKind, list[tuple[str, dict[str, Any]]]]:
    """Return the environment's entries of each kind as (name, document) pairs, in their order."""
    rules = settings.routing_rules or list(DEFAULT_RULES)
    named_rules: list[tuple[str, dict[str, Any]]] = []
    taken: set[str] = set()
    for rule in rules:
        name, number = rule.name, 1
        while name in taken:  # the environment may repeat a name (the default is "rule"); keys may not
            number += 1
            name = f"{rule.name}-{number}"
        taken.add(name)
        named_rules.append((name, rule.model_dump(mode="json", exclude_defaults=True)))
    return {
        ConfigKind.CALLING_AE: [
            (title, peer.model_dump(mode="json", exclude_defaults=True)) for title, peer in settings.calling_aes.items()
        ],
        ConfigKind.DESTINATION: [
            (d.name, d.model_dump(mode="json", exclude_defaults=True)) for d in settings.destinations
        ],
        ConfigKind.ROUTING_RULE: named_rules,
        ConfigKind.MODEL: [(name, {"path": str(path)}) for name, path in settings.models.items()],
    }


def seed_configuration(
    session: Session,
    settings: Settings,
    prompts: Sequence[PromptValue] | None = None,
    *,
    environment: bool = True,
    actor: str = SEED_ACTOR,
) -> list[str]:
    """Copy every kind not yet seeded from the environment (and ``prompts``, when given); return the kinds copied.

    Each copied entry is saved through :func:`integration.app_config.save` (checked and audited).  Call it
    in its own transaction: it holds the generation row's lock until that commits.  ``environment=False``
    seeds the prompts only (a worker's start: the environment kinds are seeded by ``pacs-vlm db upgrade``).

    Raises
    ------
    ConfigRefused
        An environment value that the checking service refuses (nothing is kept; the message names it).
    """
    seeded = rows.lock_generation(session)
    done: list[str] = []
    for kind, entries in environment_documents(settings).items():
        if kind.value in seeded or not environment or not entries:
            continue  # an empty variable seeds nothing: each process keeps its own until a kind is configured
        for position, (name, document) in enumerate(entries):
            try:
                save(session, kind, name, document, actor=actor, position=position, source="seed")
            except ConfigRefused as error:
                raise ConfigRefused(f"PACSVLM_{kind.value.upper()}S cannot be seeded: {error}") from None
        rows.mark_seeded(session, kind.value)
        done.append(kind.value)
    if prompts is not None and PROMPT_KIND not in seeded:
        for position, prompt in enumerate(prompts):
            rows.save_prompt(
                session,
                prompt.name,
                modality=prompt.modality,
                body_parts=list(prompt.body_parts),
                task=prompt.task,
                actor=actor,
                position=position,
                version=prompt.version,
                source="seed",
            )
        rows.mark_seeded(session, PROMPT_KIND)
        done.append(PROMPT_KIND)
    if done:
        log.info("configuration seeded from the environment: %s", ", ".join(done))
    return done
