"""Routing rules: which series of a study go to the model, and how they are shown.

Settings (:mod:`integration.config`) read rules from ``PACSVLM_ROUTING_RULES``,
and every process imports the settings, so this module imports only pydantic
and the standard library: no numpy, no pydicom.  The rules are applied by
:func:`integration.imaging.selection.choose_series`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from integration.imaging.slices import Series

#: Names of the CT window presets (the keys of :data:`integration.imaging.windows.WINDOW_PRESETS`,
#: repeated here so that the settings can check a rule without importing numpy).
WINDOW_PRESET_NAMES = ("lung", "mediastinum", "bone", "brain", "soft_tissue")
#: Most images one rule may send.
MAX_IMAGES_LIMIT = 1024
#: Largest montage grid (tiles per side).
MAX_MONTAGE_GRID = 4


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

    def accepts(self, series: Series, calling_ae: str | None) -> bool:
        """Tell whether every set criterion accepts a series of a study sent by ``calling_ae`` (None when unknown)."""
        if self.calling_ae is not None and (calling_ae or "").strip() != self.calling_ae:
            return False
        if self.modality is not None and series.modality != self.modality:
            return False
        return self.body_part is None or self.body_part in _series_body_parts(series)


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
