"""The prompt templates in force for this worker: the database's current versions, seeded from the built-ins.

The models' templates (:data:`models.prompts.TEMPLATES`) are data the edge may not import, so the worker is
where they meet the database: it hands them to :mod:`integration.config_seed` at start (once per database,
at their own version numbers) and turns the rows :mod:`integration.live_config` reads into the
:class:`~models.prompts.PromptTemplate` objects the pipeline renders.  A draft's ``name/vN`` is therefore
the version of the row it was drafted with.  Before prompts are seeded the built-ins apply.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from integration.app_config import PromptValue
from integration.config import Settings
from integration.config_seed import seed_configuration
from integration.live_config import live_snapshot
from integration.store.session import session_scope
from models.prompts import TEMPLATES, PromptTemplate

log = logging.getLogger(__name__)


def builtin_prompt_seeds() -> list[PromptValue]:
    """Return the built-in templates as the seed copies them (their order is the order they are tried)."""
    return [PromptValue(t.name, t.version, t.modality, t.body_parts, t.task) for t in TEMPLATES]


def seed_prompts(settings: Settings) -> list[str]:
    """Copy the built-in templates into a database that has none yet (a worker's start); return the kinds seeded.

    A failure (a database being upgraded) is logged: the built-ins apply until a later start seeds them.
    """
    try:
        with session_scope(settings.database_url) as session:
            return seed_configuration(session, settings, builtin_prompt_seeds(), environment=False)
    except SQLAlchemyError as error:
        log.warning("built-in prompt templates not seeded (%s): they apply as they are", type(error).__name__)
        return []


def templates_in_force(settings: Settings) -> tuple[PromptTemplate, ...]:
    """Return the prompt templates a draft may use now, in the order they are tried."""
    prompts = live_snapshot(settings).prompts
    if prompts is None:
        return TEMPLATES
    return tuple(PromptTemplate(p.name, p.version, p.modality, p.body_parts, p.task) for p in prompts)
