"""The configuration an administrator changes while everything runs: its rows, and the one generation number.

Destinations, calling AEs, routing rules and the model list are documents (JSON, validated by the same
value objects as the ``PACSVLM_*`` variables they replace) keyed by kind and name, ordered by position
where order matters (routing rules are tried in order).  Prompt templates are kept by version, never
overwritten: a draft records ``name/vN`` and that text stays readable.  Every change bumps the single
``config_generation`` row in the same transaction, so a process that polls one integer knows when to read
the rest again.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import Base, UTCDateTime, _enum, utcnow

#: The seeded-kinds name of the prompt templates (kept in their own table, not a :class:`ConfigKind`).
PROMPT_KIND = "prompt"


class ConfigKind(enum.StrEnum):
    """The kinds of configuration kept in the database (prompt templates have their own table)."""

    DESTINATION = "destination"
    CALLING_AE = "calling_ae"
    ROUTING_RULE = "routing_rule"
    MODEL = "model"


class ConfigEntry(Base):
    """One destination, calling AE, routing rule or model, as the JSON document its value object reads."""

    __tablename__ = "config_entries"
    __table_args__ = (UniqueConstraint("kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[ConfigKind] = mapped_column(_enum(ConfigKind, "config_kind"))
    #: The destination's or rule's name, the AE title, the model name.
    name: Mapped[str] = mapped_column(String(64))
    #: Order within the kind (routing rules are tried in this order); gaps allowed.
    position: Mapped[int] = mapped_column(Integer, default=0)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class PromptTemplateRow(Base):
    """One version of one prompt template; a new wording is a new row with the next version."""

    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    #: DICOM modality it applies to (None: any).
    modality: Mapped[str | None] = mapped_column(String(16))
    #: Body part keywords it applies to (empty: any).
    body_parts: Mapped[list[str]] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(Text)
    #: Where the template stands among the others when one is chosen by modality and body part.
    position: Mapped[int] = mapped_column(Integer, default=0)
    #: A retired template is no longer chosen or offered; its versions stay for the drafts that name them.
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class ConfigGeneration(Base):
    """The single row whose number every configuration change increments."""

    __tablename__ = "config_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Kinds already seeded from the environment (comma list): a kind emptied by an administrator stays empty.
    seeded: Mapped[str] = mapped_column(String(255), default="")
