"""Configuration changed in the application: every document checked by its value object before it is kept.

The admin pages and ``pacs-vlm config`` both come here, so a destination saved from a page is refused for
exactly the reasons ``PACSVLM_DESTINATIONS`` would be refused at start-up.  Secrets never live in these
documents: a destination's credentials stay files or environment variables it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from integration.config import MODEL_NAME, CallingAE, _check_ae_title
from integration.destinations import Destination
from integration.imaging.routing import RoutingRule
from integration.store import app_config as rows
from integration.store.config_tables import PROMPT_KIND, ConfigEntry, ConfigKind, PromptTemplateRow

#: Longest prompt task text an administrator may save.
MAX_PROMPT_TASK_CHARS = 4000
#: Prompt template names: as model names.
PROMPT_NAME = MODEL_NAME


class ModelEntry(BaseModel):
    """One staged model of the model list (a ``PACSVLM_MODELS`` entry).

    Attributes
    ----------
    path : Path
        Folder of the model's weights, processor and tokenizer on the workers' disk.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path


class PromptFields(BaseModel):
    """What an administrator writes of a prompt template (the version is given when it is saved).

    Attributes
    ----------
    modality : str or None
        DICOM modality it applies to (None: any).
    body_parts : list of str
        Body part keywords (upper case) it applies to (empty: any).
    task : str
        What the model is asked to do, before the output format.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modality: Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[A-Z]{1,16}$")] | None = None
    body_parts: list[Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Z0-9 _-]+$")]] = Field(
        default_factory=list, max_length=32
    )
    task: Annotated[str, Field(min_length=10, max_length=MAX_PROMPT_TASK_CHARS)]


@dataclass(frozen=True)
class PromptValue:
    """One version of one prompt template: a built-in one handed to the seed, or the database's current one.

    Attributes
    ----------
    name : str
        The template's name (``ct-chest``).
    version : int
        Its version (a draft made with it records ``name/vN``; a built-in keeps its own number when seeded).
    modality : str or None
        DICOM modality it applies to (None: any).
    body_parts : tuple of str
        Body part keywords it applies to (empty: any).
    task : str
        What the model is asked to do.
    """

    name: str
    version: int
    modality: str | None
    body_parts: tuple[str, ...]
    task: str


class ConfigRefused(ValueError):
    """A document or name that its value object refuses; the message says why (safe to show an administrator)."""


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(step) for step in item["loc"]) or "document"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def check(kind: ConfigKind, name: str, document: dict[str, Any]) -> BaseModel:
    """Return the value object of a document of ``kind`` named ``name``.

    Raises
    ------
    ConfigRefused
        The name or the document is invalid; the message lists every problem.
    """
    try:
        if kind is ConfigKind.DESTINATION:
            value: BaseModel = Destination.model_validate({**document, "name": name})
        elif kind is ConfigKind.CALLING_AE:
            if _check_ae_title(name) != name:
                raise ConfigRefused(f"AE title {name!r} has leading or trailing spaces")
            value = CallingAE.model_validate(document)
        elif kind is ConfigKind.ROUTING_RULE:
            value = RoutingRule.model_validate({**document, "name": name})
        else:
            if not MODEL_NAME.match(name):
                raise ConfigRefused(f"not a valid model name: {name!r} (a-z, 0-9, '.', '_', '-'; up to 64)")
            value = ModelEntry.model_validate(document)
    except ValidationError as error:
        raise ConfigRefused(f"{kind.value} {name!r}: {_explain(error)}") from None
    except ValueError as error:
        if isinstance(error, ConfigRefused):
            raise
        raise ConfigRefused(f"{kind.value} {name!r}: {error}") from None
    return value


def save(
    session: Session,
    kind: ConfigKind,
    name: str,
    document: dict[str, Any],
    *,
    actor: str,
    position: int | None = None,
    source: str | None = None,
) -> ConfigEntry:
    """Check and keep one entry (created or replaced); audited with before and after.

    Raises
    ------
    ConfigRefused
        The document is invalid, or a routing rule names a model or prompt the database does not hold
        (nothing is changed).
    """
    value = check(kind, name, document)
    if isinstance(value, RoutingRule):
        models, prompts = _configured_names(session)
        unknown = value.unconfigured(models, prompts)
        if unknown:
            raise ConfigRefused(f"routing rule {name!r} names {', '.join(unknown)}, which is not configured")
    stored = value.model_dump(mode="json", exclude_defaults=True)
    stored.pop("name", None)  # the entry's name is the key
    return rows.put_entry(session, kind, name, stored, actor=actor, position=position, source=source)


class _Any(frozenset[str]):
    """Every name (a kind not seeded yet: its names are the environment's, checked when a job is made)."""

    def __contains__(self, item: object) -> bool:
        return True


def _configured_names(session: Session) -> tuple[frozenset[str], frozenset[str]]:
    """The models and prompt names the database holds (every name for a kind it does not hold yet)."""
    seeded = rows.seeded_kinds(session)
    models = frozenset(e.name for e in rows.list_entries(session, ConfigKind.MODEL))
    prompts = frozenset(p.name for p in rows.current_prompts(session))
    return models if ConfigKind.MODEL in seeded else _Any(), prompts if PROMPT_KIND in seeded else _Any()


def _rules_naming(session: Session, field_names: tuple[str, ...], name: str) -> list[str]:
    """The routing rules whose ``field_names`` name ``name``."""
    return [
        entry.name
        for entry in rows.list_entries(session, ConfigKind.ROUTING_RULE)
        if any(entry.document.get(field) == name for field in field_names)
    ]


def remove(session: Session, kind: ConfigKind, name: str, *, actor: str, source: str | None = None) -> bool:
    """Delete one entry (audited); return whether there was one.

    Raises
    ------
    ConfigRefused
        A model that a routing rule names (change or delete the rule first).
    """
    if kind is ConfigKind.MODEL and (users := _rules_naming(session, ("model", "shadow_model"), name)):
        raise ConfigRefused(f"model {name!r} is named by routing rule(s) {', '.join(users)}: change them first")
    return rows.delete_entry(session, kind, name, actor=actor, source=source) is not None


def save_prompt(
    session: Session,
    name: str,
    fields: dict[str, Any],
    *,
    actor: str,
    position: int | None = None,
    retired: bool = False,
    source: str | None = None,
) -> PromptTemplateRow:
    """Check a template's fields and keep them as its next version (unchanged fields keep the current one).

    Raises
    ------
    ConfigRefused
        The name or a field is invalid, or a retired template is named by a routing rule.
    """
    if not PROMPT_NAME.match(name):
        raise ConfigRefused(f"not a valid prompt name: {name!r} (a-z, 0-9, '.', '_', '-'; up to 64)")
    if retired and (users := _rules_naming(session, ("prompt", "shadow_prompt"), name)):
        raise ConfigRefused(f"prompt {name!r} is named by routing rule(s) {', '.join(users)}: change them first")
    try:
        checked = PromptFields.model_validate(fields)
    except ValidationError as error:
        raise ConfigRefused(f"prompt {name!r}: {_explain(error)}") from None
    return rows.save_prompt(
        session,
        name,
        modality=checked.modality,
        body_parts=checked.body_parts,
        task=checked.task,
        actor=actor,
        position=position,
        retired=retired,
        source=source,
    )


def entry_values(entries: Sequence[ConfigEntry]) -> list[BaseModel]:
    """Return the value objects of stored entries (they were checked when saved; checked again here)."""
    return [check(entry.kind, entry.name, entry.document) for entry in entries]
