"""Body regions named by Body Part Examined or a description: one vocabulary for routing, windows and priors.

The routing rules (imported by the settings, so no numpy or pydicom here), the
CT window presets and the choice of a prior of the same region all ask "which
region is this?" of the same words; this module answers it once, from plain text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

#: Body regions and the words (in Body Part Examined or a description) that name them.
BODY_REGION_KEYWORDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "HEAD": frozenset({"HEAD", "BRAIN", "SKULL", "CRANIUM", "CEREBRAL", "NEURO"}),
        "CHEST": frozenset({"CHEST", "LUNG", "LUNGS", "THORAX", "THORACIC", "PULMONARY", "THORAXAP"}),
        "ABDOMEN": frozenset({"ABDOMEN", "ABDOMINAL", "LIVER", "KIDNEY", "PANCREAS"}),
        "PELVIS": frozenset({"PELVIS", "PELVIC", "HIP"}),
        "SPINE": frozenset({"SPINE", "CSPINE", "TSPINE", "LSPINE", "SPINAL"}),
    }
)
_WORD = re.compile(r"[A-Z0-9]+")


def body_region(body_part: str | None, description: str | None = None, *descriptions: str | None) -> str | None:
    """Return the body region that Body Part Examined or a description names (``"CHEST"``, ``"HEAD"`` ...), or None.

    ``body_part`` is read first, then ``description`` (a Series Description), then any further
    ``descriptions`` (a Study Description) in order; the first that names a region (a key of
    :data:`BODY_REGION_KEYWORDS`) decides.  Words are compared upper case, so ``"Thorax 1.0"`` is CHEST.
    """
    for text in (body_part, description, *descriptions):
        if not text:
            continue
        words = frozenset(_WORD.findall(str(text).upper()))
        for region, names in BODY_REGION_KEYWORDS.items():
            if words & names:
                return region
    return None
