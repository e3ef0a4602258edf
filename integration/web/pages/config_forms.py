"""Form fields read off a configuration value object, and the audit trail's before/after as a difference.

Why: the administrator's configuration pages edit documents that :mod:`integration.app_config` checks with
their value objects (``CallingAE``, ``RoutingRule`` ...).  Rather than a hand-written form per object, each
field of a simple type (text, number, yes/no, a list of words, a choice) becomes a form field here and the
others (a rule's prior policy, say) go to a JSON box, so a field added to a value object shows up on its page
without a page change.  Nothing is validated here: the typed strings go to the value object, which says what
is wrong.
"""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from integration.app_config import ConfigRefused

#: Widgets a simple field is shown with.
Widget = Literal["text", "number", "checkbox", "list", "select"]


@dataclass(frozen=True)
class FormField:
    """One form field of a value object's simple field.

    Attributes
    ----------
    name : str
        The field's name (the form field's name too).
    label : str
        What the page calls it.
    widget : str
        ``text``, ``number``, ``checkbox``, ``list`` (comma-separated words) or ``select``.
    value : str
        The text shown in it (a list joined by commas; empty for unset).
    checked : bool
        A checkbox's state.
    choices : tuple of (str, str)
        A select's options (value, label); the first may be ``("", "(none)")``.
    help : str
        The field's description from its value object, when it has one.
    """

    name: str
    label: str
    widget: Widget
    value: str = ""
    checked: bool = False
    choices: tuple[tuple[str, str], ...] = ()
    help: str = ""


@dataclass(frozen=True)
class Change:
    """One difference between a configuration entry's before and after (dotted key; None: absent)."""

    key: str
    before: str | None
    after: str | None


def _unwrap(annotation: Any) -> Any:
    """The annotation without ``Annotated`` and without ``None`` in a union (None when it is no simple type)."""
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        others = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _unwrap(others[0]) if len(others) == 1 else None
    return annotation


def _widget(annotation: Any) -> tuple[Widget, tuple[str, ...]] | None:
    """The widget of a field's type and a choice's options; None for a type the JSON box holds."""
    kind = _unwrap(annotation)
    origin = get_origin(kind)
    if kind is bool:
        return "checkbox", ()
    if kind in (int, float):
        return "number", ()
    if kind in (str, Path):
        return "text", ()
    if origin is Literal:
        return "select", tuple(str(arg) for arg in get_args(kind))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "select", tuple(str(member.value) for member in kind)
    if origin in (list, tuple) and get_args(kind) and _unwrap(get_args(kind)[0]) is str:
        return "list", ()
    return None


def simple_fields(model: type[BaseModel], skip: Iterable[str] = ()) -> dict[str, tuple[Widget, tuple[str, ...]]]:
    """Return the fields of ``model`` shown as form fields, with their widget and options, in declared order."""
    left_out = set(skip)
    found = {}
    for name, info in model.model_fields.items():
        widget = _widget(info.annotation)
        if name not in left_out and widget is not None:
            found[name] = widget
    return found


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def form_fields(
    model: type[BaseModel],
    current: Mapping[str, Any],
    *,
    skip: Iterable[str] = (),
    choices: Mapping[str, Iterable[tuple[str, str]]] | None = None,
) -> list[FormField]:
    """Return the form fields of ``model``'s simple fields, filled from ``current``.

    ``current`` is either an entry's values (a value object's ``model_dump()``) or what was typed in a refused
    form (strings; an unchecked box absent), so a refused form shows exactly what was sent.  ``choices``
    gives a text field a select (a calling AE's site from the sites table); a field without a value in
    ``current`` shows its default.
    """
    extra_choices = dict(choices or {})
    shown = []
    for name, (widget, options) in simple_fields(model, skip).items():
        info = model.model_fields[name]
        default = None if info.default is PydanticUndefined else info.default
        value = current.get(name, default)
        picked: tuple[tuple[str, str], ...] = ()
        if name in extra_choices or widget == "select":
            widget = "select"
            listed = tuple(extra_choices[name]) if name in extra_choices else tuple((o, o) for o in options)
            picked = ((("", "(none)"),) if not info.is_required() else ()) + listed
        shown.append(
            FormField(
                name=name,
                label=name.replace("_", " "),
                widget=widget,
                value=_shown(value),
                checked=value is True or value == "on",
                choices=picked,
                help=info.description or "",
            )
        )
    return shown


def rest_json(model: type[BaseModel], value: BaseModel | None, *, skip: Iterable[str] = ()) -> str:
    """Return the fields of ``value`` that are not form fields and not defaults, as indented JSON ('' if none)."""
    if value is None:
        return ""
    left_out = set(skip) | set(simple_fields(model))
    rest = value.model_dump(mode="json", exclude_defaults=True, exclude=left_out)
    return json.dumps(rest, indent=2, sort_keys=True) if rest else ""


def json_object(text: str) -> dict[str, Any]:
    """Return the JSON object a JSON box holds.

    Raises
    ------
    ConfigRefused
        The text is not JSON, or not one object.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigRefused(f"the JSON box is not JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(document, dict):
        raise ConfigRefused("the JSON box holds one JSON object ({...})")
    return document


def document_from_form(
    model: type[BaseModel], form: Mapping[str, str], json_text: str, *, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """Return the document a form describes: its simple fields as typed, plus the JSON box's object.

    An empty text field or list leaves the field at its default; an unchecked box is false.

    Raises
    ------
    ConfigRefused
        The JSON box is not a JSON object, or it sets a field that has a form field of its own.
    """
    document = json_object(json_text) if json_text.strip() else {}
    fields = simple_fields(model, skip)
    doubled = sorted(set(document) & (set(fields) | set(skip)))
    if doubled:
        raise ConfigRefused(f"set {', '.join(doubled)} in the form fields, not in the JSON box")
    for name, (widget, _) in fields.items():
        typed = form.get(name, "")
        if widget == "checkbox":
            document[name] = typed == "on"
        elif widget == "list":
            words = [word.strip() for word in typed.split(",") if word.strip()]
            if words:
                document[name] = words
        elif typed.strip():
            document[name] = typed.strip()
    return document


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat |= _flat(item, f"{prefix}.{key}" if prefix else str(key))
        return flat
    if value is None and not prefix:
        return {}
    return {prefix or "value": value if isinstance(value, str) else json.dumps(value)}


def differences(before: Any, after: Any) -> list[Change]:
    """Return what changed between an audited before and after (nested keys dotted; lists as JSON)."""
    old, new = _flat(before), _flat(after)
    return [
        Change(key, old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
