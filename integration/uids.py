"""DICOM UIDs: the one rule for what counts as a valid UID, shared by every layer.

It lives below everything else because the store, the findings type, the intake and the web routes all
need it, and a path is built from a UID only after it passed this check (CVE-2022-2119/2120 class bugs).
"""

from __future__ import annotations

import hashlib
import re
import uuid

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """Tell whether ``value`` is a DICOM UID: digits and dots, at most 64 characters.

    Leading zeros in a component are tolerated (common in the field); anything that could act as a path
    (slashes, dots alone, other characters) is not.
    """
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def derived_uid(*parts: str) -> str:
    """Return a UID fixed by ``parts``: ``2.25.`` and a UUID made from their SHA-512 (PS3.5 B.2).

    The same parts always give the same UID, so a document built again (a lost file, a re-send) keeps its
    identity without storing the UID; different parts give different UIDs (a hash collision aside).

    Parameters
    ----------
    *parts : str
        What the UID is of, for example an SR's SOP Instance UID and the role of the new object.

    Returns
    -------
    str
        A valid UID of at most 64 characters.

    Raises
    ------
    ValueError
        No parts.
    """
    if not parts:
        raise ValueError("a derived UID needs at least one part")
    digest = hashlib.sha512("\x1f".join(("pacs-vlm", *parts)).encode("utf-8")).digest()
    # a name-based UUID (version 5 bits set) as one integer: at most 39 digits, so 44 characters in all
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"
