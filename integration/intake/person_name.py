"""A patient's name typed as ordinary fields (family, given, middle), turned into a DICOM person name.

Uploaders should not have to know the DICOM ``Family^Given^Middle`` form, so the form asks for each part
and this module joins them.  Each part is checked on its own: no ``^`` (the component separator), ``=``
(the component group separator), backslash (the value separator) or control characters, and the joined
alphabetic group holds at most 64 characters, as the PN value representation allows.  Messages name the
field, never what was typed (patient data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Most characters of one PN component group (the alphabetic group is all that is written).
PN_GROUP_CHARS = 64
#: The form's name fields, in PN component order.
NAME_FIELDS = ("family_name", "given_name", "middle_name")

_FORBIDDEN = re.compile(r"[\^=\\\x00-\x1f\x7f]")
_LO_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


def typed_name_fields(form: Mapping[str, str | None]) -> bool:
    """Say whether the form carries any of the ordinary name fields (else the legacy ``patient_name``)."""
    return any((form.get(name) or "").strip() for name in NAME_FIELDS)


def name_from_parts(form: Mapping[str, str | None], errors: dict[str, str]) -> str | None:
    """Join ``family_name``, ``given_name`` and ``middle_name`` into ``Family^Given^Middle``.

    The family name is required; the others are optional.  Problems are added to ``errors`` under the
    field's name; None is returned when there is any.
    """
    parts: list[str] = []
    bad = False
    for name in NAME_FIELDS:
        text = " ".join((form.get(name) or "").split())
        if name == "family_name" and not text:
            errors[name] = "is required"
            bad = True
        elif _FORBIDDEN.search(text):
            errors[name] = "contains ^, =, a backslash or a control character"
            bad = True
        parts.append(text)
    while parts and not parts[-1]:
        parts.pop()
    joined = "^".join(parts)
    if not bad and len(joined) > PN_GROUP_CHARS:
        errors["family_name"] = f"and the other name parts have more than {PN_GROUP_CHARS} characters together"
        bad = True
    return None if bad else joined


def legacy_name(value: str | None, errors: dict[str, str]) -> str | None:
    """Check a name already in DICOM form (``Family^Given``), the JSON API's older ``patient_name`` field."""
    text = (value or "").strip()
    if not text:
        errors["patient_name"] = "is required"
    elif len(text) > PN_GROUP_CHARS:
        errors["patient_name"] = f"has more than {PN_GROUP_CHARS} characters"
    elif _LO_FORBIDDEN.search(text) or "=" in text or text.count("^") > 4:
        errors["patient_name"] = "is not a person name (Family^Given; no backslash, '=' or control characters)"
    elif not text.replace("^", "").strip():
        errors["patient_name"] = "has no name in it"
    return text or None


def name_parts(person_name: str) -> dict[str, str]:
    """Split a stored ``Family^Given^Middle`` back into the form's fields (to prefill a new case)."""
    parts = person_name.split("=")[0].split("^")
    return {name: (parts[i] if i < len(parts) else "") for i, name in enumerate(NAME_FIELDS)}
