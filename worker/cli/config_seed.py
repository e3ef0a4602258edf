"""``pacs-vlm config seed``: copy the environment and the built-in prompt templates into the database, once per kind.

It lives on the worker side because the built-in templates are the models' data (the edge may not import
them); :mod:`worker.cli` mounts it under ``pacs-vlm config``.  ``pacs-vlm db upgrade`` seeds the
environment's kinds as well, and each worker seeds the prompts at its start, so a fresh install needs
neither by hand; it is here for an existing database that predates the configuration tables.
"""

from __future__ import annotations

from integration.app_config import ConfigRefused
from integration.cli import console, fail, load_settings
from integration.config_seed import seed_configuration


def config_seed() -> None:
    """Copy what is not in the database yet: PACSVLM_CALLING_AES, _DESTINATIONS, _ROUTING_RULES, _MODELS, prompts."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.session import session_scope
    from worker.live_prompts import builtin_prompt_seeds

    settings = load_settings()
    try:
        with session_scope(settings.database_url) as session:
            done = seed_configuration(session, settings, builtin_prompt_seeds())
    except ConfigRefused as exc:
        raise fail(str(exc), 2) from None
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    if done:
        console.print(f"seeded from the environment: {', '.join(done)}", soft_wrap=True)
    else:
        console.print("nothing to seed: every kind is in the database already ('pacs-vlm config list')")
