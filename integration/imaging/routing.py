"""Routing rules: which series of a study go to the model, how they are shown, and which priors go with them.

Settings (:mod:`integration.config`) read rules from ``PACSVLM_ROUTING_RULES``,
and every process imports the settings, so this module imports only pydantic
and the standard library: no numpy, no pydicom.  The rules are applied by
:func:`integration.imaging.selection.choose_series` to the series of a study we
hold, and, through :meth:`RoutingRule.accepts_attributes`, to the series-level
query results of an archive (the series of a prior worth fetching).

Slices or windows
-----------------
A rule's ``max_images`` is shared between its ``windows``: 8 images in two
windows are 4 slice positions, each shown twice.  The default chest CT rule
keeps two windows (lung, mediastinum) and so samples fewer positions, because
lung parenchyma is black in a mediastinal window and the mediastinum, hila,
vessels and pleural fluid are a flat white in a lung window: a radiologist reads
a chest CT in both, and a model shown one window cannot report on the other
half of the anatomy at all, whereas four evenly spaced positions (the centres of
four equal segments: upper, mid-upper, mid-lower and lower chest) still pass
through every lobe.  The head rule keeps the brain window only (eight
positions): haemorrhage, infarct and mass effect are small and level-dependent,
so positions matter more there, and a bone window would halve them for a
finding (a fracture) that a trauma rule can ask for with ``windows``.  The other
rules use the header's window (one per slice, the most positions).

How images are given (:data:`Presentation`)
--------------------------------------------
``"separate"``: one image per chosen slice and window (multi-image models);
``"montage"``: every chosen slice and window tiled into one labelled grid
(single-image models); ``"series"``: every frame of the chosen series in each
window (long-context models).  The model registry names one per family with
these same strings; this module does not import it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Re-exported: the region words are routing's vocabulary too (priors match regions through this module).
from integration.imaging.regions import BODY_REGION_KEYWORDS as BODY_REGION_KEYWORDS
from integration.imaging.regions import body_region as body_region

if TYPE_CHECKING:
    from integration.imaging.slices import Series

#: How a model is given the chosen images (see the module docstring).
Presentation = Literal["montage", "separate", "series"]
#: The values of :data:`Presentation`.
PRESENTATIONS: tuple[Presentation, ...] = ("montage", "separate", "series")

#: Names of the CT window presets (the keys of :data:`integration.imaging.windows.WINDOW_PRESETS`,
#: repeated here so that the settings can check a rule without importing numpy).
WINDOW_PRESET_NAMES = ("lung", "mediastinum", "bone", "brain", "soft_tissue")
#: Most images one rule may send.
MAX_IMAGES_LIMIT = 1024
#: Largest montage grid (tiles per side).
MAX_MONTAGE_GRID = 4


class PriorPolicy(BaseModel):
    """Which earlier studies of the patient are compared with a study a rule routes.

    Attributes
    ----------
    count : int
        Most priors per study (0: none), the most recent first.
    lookback_days : int
        How far back a prior may be (default about 5 years).
    modalities : tuple of str
        Modalities a prior may have; empty: the modality of the current series.
    match_region : bool
        Whether the prior must show the same body region (by body part, or similar study descriptions).
    max_images : int or None
        Prior images given to the model; None: half the current study's image budget.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(default=1, ge=0, le=5)
    lookback_days: int = Field(default=1826, ge=1, le=36500)
    modalities: tuple[str, ...] = ()
    match_region: bool = True
    max_images: int | None = Field(default=None, ge=1, le=64)

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(dict.fromkeys(m.strip().upper() for m in value))
        if any(not m for m in cleaned):
            raise ValueError("a prior modality is empty")
        return cleaned


class RoutingRule(BaseModel):
    """Which series of a study go to the model, and how they are shown.

    A rule accepts a series when each of ``modality``, ``body_part`` and
    ``calling_ae`` is unset or matches.  The first rule that accepts a series
    of the study is used.

    Attributes
    ----------
    name : str
        Name used in logs.
    modality : str or None
        Modality of the series (``"CT"``).
    body_part : str or None
        Body region (``"CHEST"``, ``"HEAD"`` ...) or Body Part Examined value.
    calling_ae : str or None
        Calling AE title the study came from.
    max_images : int
        Images sent to the model (split between the windows).
    windows : tuple of str
        :data:`~integration.imaging.windows.WINDOW_PRESETS` names, one image per
        window and slice (CT only); empty for the header's window or an automatic one.
    montage : bool
        Tile ``montage_grid`` x ``montage_grid`` slices into each image.
    montage_grid : int
        Tiles per side of a montage.
    whole_series : bool
        Send every frame of the chosen series (no sampling; the rule's
        ``max_images`` is ignored, a caller's ``max_images`` still caps it).
    across_series : bool
        Take images from every accepted series rather than the largest one (radiographs).
    include_derived : bool
        Derived and secondary series (localizers, dose reports, screen captures, scanned documents,
        reformats: see :func:`integration.imaging.instances.derived_kind`) may be chosen; by default
        they never are.
    priors : PriorPolicy
        Which prior studies go with a study this rule routes.
    model : str or None
        Configured model (a ``PACSVLM_MODELS`` name) that drafts the studies this rule takes; None: the
        default model.
    prompt : str or None
        Prompt template name; None: chosen by modality and body part.
    priority : {"routine", "stat"}
        ``stat``: the job goes to the stat queue and the study is stat until its report is signed.
    skip : bool
        The studies this rule takes are not analysed: they end ``skipped``, naming the rule (excludes
        ``model``, ``prompt``, ``priority`` stat and the shadow fields).
    shadow_model : str or None
        Shadow mode: a candidate model that drafts the same studies, hidden from reviewers, measured
        against the signed reports (None with ``shadow_prompt`` set: the rule's model).
    shadow_prompt : str or None
        The candidate's prompt template (None: chosen by modality and body part).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "rule"
    modality: str | None = None
    body_part: str | None = None
    calling_ae: str | None = None
    max_images: int = Field(default=8, ge=1, le=MAX_IMAGES_LIMIT)
    windows: tuple[str, ...] = ()
    montage: bool = False
    montage_grid: int = Field(default=2, ge=2, le=MAX_MONTAGE_GRID)
    whole_series: bool = False
    across_series: bool = False
    include_derived: bool = False
    priors: PriorPolicy = PriorPolicy()
    model: str | None = Field(default=None, min_length=1, max_length=64)
    prompt: str | None = Field(default=None, min_length=1, max_length=64)
    priority: Literal["routine", "stat"] = "routine"
    skip: bool = False
    shadow_model: str | None = Field(default=None, min_length=1, max_length=64)
    shadow_prompt: str | None = Field(default=None, min_length=1, max_length=64)

    @property
    def has_shadow(self) -> bool:
        """Whether a candidate drafts the studies this rule takes (shadow mode)."""
        return self.shadow_model is not None or self.shadow_prompt is not None

    @model_validator(mode="after")
    def _skip_alone(self) -> RoutingRule:
        if self.skip:
            named = [f for f in ("model", "prompt", "shadow_model", "shadow_prompt") if getattr(self, f) is not None]
            if self.priority == "stat":
                named.append("priority stat")
            if named:
                raise ValueError(f"rule {self.name!r} skips its studies: it cannot also name {', '.join(named)}")
        elif self.has_shadow and (self.shadow_model, self.shadow_prompt) == (self.model, self.prompt):
            raise ValueError(f"rule {self.name!r}: the shadow model and prompt are the primary's own")
        return self

    @field_validator("modality", "body_part")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip().upper() or None

    @field_validator("calling_ae")
    @classmethod
    def _ae_title(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None

    @field_validator("windows")
    @classmethod
    def _known_windows(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in WINDOW_PRESET_NAMES]
        if unknown:
            raise ValueError(f"unknown window preset(s) {unknown}; known: {sorted(WINDOW_PRESET_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError("a window preset is named twice")
        return value

    @model_validator(mode="after")
    def _windows_need_ct(self) -> RoutingRule:
        if self.windows and self.modality != "CT":
            raise ValueError("window presets are in Hounsfield units: only a rule for modality CT may name them")
        return self

    def unconfigured(self, models: Collection[str], prompts: Collection[str]) -> list[str]:
        """Return what the rule names that is not configured (``model 'x'``, ``prompt 'y'``); empty: all known."""
        unknown = []
        for field, value, known in (
            ("model", self.model, models),
            ("prompt", self.prompt, prompts),
            ("shadow_model", self.shadow_model, models),
            ("shadow_prompt", self.shadow_prompt, prompts),
        ):
            if value is not None and value not in known:
                unknown.append(f"{field} {value!r}")
        return unknown

    def accepts(self, series: Series, calling_ae: str | None) -> bool:
        """Tell whether every set criterion accepts a series of a study sent by ``calling_ae`` (None when unknown)."""
        return self.accepts_attributes(series.modality, _series_body_parts(series), calling_ae)

    def accepts_attributes(
        self, modality: str | None, body_parts: Iterable[str | None], calling_ae: str | None
    ) -> bool:
        """Tell whether every set criterion accepts a series with these attributes (as :meth:`accepts` does).

        For the series-level query results of an archive.  ``body_parts`` are Body Part Examined values
        or regions (a description may be given too): the rule's ``body_part`` matches one of them, upper
        case, or the region one of them names (:func:`body_region`).  ``calling_ae`` is None when unknown.
        """
        if self.calling_ae is not None and (calling_ae or "").strip() != self.calling_ae:
            return False
        if self.modality is not None and (modality or "").strip().upper() != self.modality:
            return False
        if self.body_part is None:
            return True
        parts = {part.strip().upper() for part in body_parts if part}
        return self.body_part in parts or self.body_part in {body_region(part) for part in parts}


def first_rule_accepting(
    rules: Sequence[RoutingRule],
    series: Iterable[tuple[str | None, Iterable[str | None]]],
    calling_ae: str | None,
) -> RoutingRule | None:
    """Return the first rule (in order) that accepts one of the series, given as (modality, body parts); else None.

    The look that needs no file: a study's recorded series, an archive's series-level answers, a first
    instance's header.
    """
    pairs = [(modality, tuple(parts)) for modality, parts in series]
    for rule in rules:
        if any(rule.accepts_attributes(modality, parts, calling_ae) for modality, parts in pairs):
            return rule
    return None


def rule_for_study(
    rules: Sequence[RoutingRule] | None,
    series: Iterable[tuple[str | None, Iterable[str | None]]],
    calling_ae: str | None,
) -> RoutingRule | None:
    """Return the rule that takes a study: the first (in order) that accepts one of its recorded series.

    The one answer both sides use: the intake when the study becomes stable (the rule's model, prompt,
    priority, skip and shadow make its jobs) and the worker when it chooses the images (the same rule leads).

    Parameters
    ----------
    rules : sequence of RoutingRule or None
        The configured rules; None or empty: :data:`DEFAULT_RULES`.
    series : iterable of (modality, body parts)
        The study's series as recorded (``series.modality``, ``series.body_part``).
    calling_ae : str or None
        The AE title the study came from.
    """
    return first_rule_accepting(rules or DEFAULT_RULES, series, calling_ae)


def rules_led_by(rule: RoutingRule | None, rules: Sequence[RoutingRule] | None) -> tuple[RoutingRule, ...]:
    """Return the rules with the study's rule first, so image selection uses it whenever it takes an image."""
    configured = tuple(rules or DEFAULT_RULES)
    if rule is None:
        return configured
    return (rule, *(r for r in configured if r is not rule))


#: The rules used when none are configured: the first that accepts a series wins.
DEFAULT_RULES: tuple[RoutingRule, ...] = (
    RoutingRule(name="ct-chest", modality="CT", body_part="CHEST", windows=("lung", "mediastinum")),
    RoutingRule(name="ct-head", modality="CT", body_part="HEAD", windows=("brain",)),
    RoutingRule(name="ct", modality="CT"),
    RoutingRule(name="cr", modality="CR", across_series=True),
    RoutingRule(name="dx", modality="DX", across_series=True),
    RoutingRule(name="mg", modality="MG", across_series=True),
    RoutingRule(name="xc", modality="XC", across_series=True),
    RoutingRule(name="mr", modality="MR"),
    RoutingRule(name="default"),
)


def _series_body_parts(series: Series) -> set[str]:
    """Return the body region and Body Part Examined values of a series."""
    parts = {i.body_part for i in series.instances if i.body_part}
    if series.region:
        parts.add(series.region)
    return parts
