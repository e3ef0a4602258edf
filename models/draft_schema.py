"""The draft's JSON schema, defined once: what the model is asked for and what decoding is bound to.

The same schema constrains in-process generation (a grammar engine compiles it: see
:mod:`models.constrained`), is sent to model servers as ``response_format`` (``json_schema``), and is
what :func:`models.draft.parse_draft` reads first.  Output that does not follow it (a server without
schema support, old drafts) still goes through the lenient parser.

Per finding the model says which images it is seen on, its laterality and body region, the certainty
words it used ("possible", "likely") and an urgency category: ``critical`` for an actionable finding that
needs a person now (the critical-result categories in ``integration/safety/critical.py``), ``urgent``,
``routine`` or ``none`` (a normal finding).  The urgency is the model's claim, not a decision: the
critical-finding matcher reads it beside the text, with negation and uncertainty handled.

A finding seen on one image may carry a ``box``: the region it is seen in, ``[x0, y0, x1, y1]`` as fractions
0..1 of that image as the model saw it (padded to square and resized), x to the right and y down from the top
left.  Some families can point at a region; the box is optional, so the others never write one.  The reports
map it onto the cited frame's pixels (a region in the TID 1500 document viewers draw).

Bump :data:`SCHEMA_VERSION` whenever the schema changes; a draft records the version it was bound to.
"""

from __future__ import annotations

import json
from typing import Any

#: Recorded with every draft that was bound to the schema (``decoding`` says which path ran).
SCHEMA_VERSION = 2
#: Laterality words a finding may carry ("none": not lateral, or not said).
LATERALITIES = ("left", "right", "bilateral", "midline", "none")
#: Urgency categories, most urgent first.
URGENCIES = ("critical", "urgent", "routine", "none")
#: Caps that keep constrained output bounded (the parser's own caps still apply after).
MAX_SCHEMA_FINDINGS = 20
MAX_SCHEMA_TEXT_CHARS = 600
MAX_SCHEMA_SECTION_CHARS = 1200
MAX_SCHEMA_IMAGES = 16
MAX_CERTAINTY_WORDS = 4
#: What a finding's ``box`` is, for the schema's description.
BOX_DESCRIPTION = (
    "Optional, only for a finding cited on exactly one image: its region as [x0, y0, x1, y1], fractions 0 to 1 "
    "of that image as given (x0 < x1 from the left, y0 < y1 from the top)"
)

_TEXT = {"type": "string", "maxLength": MAX_SCHEMA_TEXT_CHARS}
_SECTION = {"type": "string", "maxLength": MAX_SCHEMA_SECTION_CHARS}

#: The draft's JSON schema (draft 2020-12 subset that xgrammar, outlines and vLLM/SGLang accept).
DRAFT_SCHEMA: dict[str, Any] = {
    "title": "pacs-vlm draft report",
    "type": "object",
    "properties": {
        "findings": {
            "type": "array",
            "maxItems": MAX_SCHEMA_FINDINGS,
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_SCHEMA_TEXT_CHARS},
                    "images": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 1},
                        "maxItems": MAX_SCHEMA_IMAGES,
                    },
                    "laterality": {"type": "string", "enum": list(LATERALITIES)},
                    "body_region": {"type": "string", "maxLength": 64},
                    "certainty": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 32},
                        "maxItems": MAX_CERTAINTY_WORDS,
                    },
                    "urgency": {"type": "string", "enum": list(URGENCIES)},
                    "box": {
                        "type": "array",
                        "description": BOX_DESCRIPTION,
                        "items": {"type": "number", "minimum": 0, "maximum": 1},
                        "minItems": 4,
                        "maxItems": 4,
                    },
                },
                "required": ["text", "images", "laterality", "body_region", "certainty", "urgency"],
                "additionalProperties": False,
            },
        },
        "impression": _SECTION,
        "limitations": _SECTION,
        "comparison": _SECTION,
    },
    "required": ["findings", "impression", "limitations", "comparison"],
    "additionalProperties": False,
}


def draft_schema_json() -> str:
    """The schema as compact JSON text, keys in declared order (findings first, a finding's text first)."""
    return json.dumps(DRAFT_SCHEMA, separators=(",", ":"))  # in declared order: a grammar makes the model write it so
