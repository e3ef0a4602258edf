"""DICOM UIDs: the one rule for what counts as a valid UID, shared by every layer.

It lives below everything else because the store, the findings type, the intake and the web routes all
need it, and a path is built from a UID only after it passed this check (CVE-2022-2119/2120 class bugs).
"""

from __future__ import annotations

import re

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """Tell whether ``value`` is a DICOM UID: digits and dots, at most 64 characters.

    Leading zeros in a component are tolerated (common in the field); anything that could act as a path
    (slashes, dots alone, other characters) is not.
    """
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None
