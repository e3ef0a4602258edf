"""Configuration changed in the application: every document checked by its value object before it is kept.

The admin pages and ``pacs-vlm config`` both come here, so a destination saved from a page is refused for
exactly the reasons ``PACSVLM_DESTINATIONS`` would be refused at start-up.  Secrets never live in these
documents: a destination's credentials stay files or environment variables it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from integration.config import MODEL_NAME, CallingAE, _check_ae_title
from integration.destinations import Destination
from integration.imaging.routing import RoutingRule
from integration.store import app_config as rows
from integration.store.config_tables import ConfigEntry, ConfigKind, PromptTemplateRow

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
        The document is invalid (nothing is changed).
    """
    value = check(kind, name, document)
    stored = value.model_dump(mode="json", exclude_defaults=True)
    stored.pop("name", None)  # the entry's name is the key
    return rows.put_entry(session, kind, name, stored, actor=actor, position=position, source=source)


def remove(session: Session, kind: ConfigKind, name: str, *, actor: str, source: str | None = None) -> bool:
    """Delete one entry (audited); return whether there was one."""
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
        The name or a field is invalid.
    """
    if not PROMPT_NAME.match(name):
        raise ConfigRefused(f"not a valid prompt name: {name!r} (a-z, 0-9, '.', '_', '-'; up to 64)")
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
