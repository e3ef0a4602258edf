"""Links from our pages to the hospital's image viewers (OHIF, Orthanc Stone or Explorer 2, a vendor viewer).

``PACSVLM_VIEWERS`` is a JSON list; each viewer has a name shown on the link and a URL template whose
placeholders are filled per study, URL-encoded::

    [{"name": "OHIF", "url": "https://ohif.hospital.example/viewer?StudyInstanceUIDs={study_uid}"},
     {"name": "Stone", "url": "https://pacs.hospital.example/stone-webviewer/index.html?study={study_uid}"},
     {"name": "PACS", "url": "https://pacs.hospital.example/viewer?accession={accession_number}"}]

Only :data:`PLACEHOLDERS` may appear, so a template cannot carry a patient's name into a URL (names end up
in proxy and browser logs); a study without a value for a template's placeholder gets no link from it.
"""

from __future__ import annotations

import re
import string
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: What a template may name.
PLACEHOLDERS = frozenset({"study_uid", "accession_number", "patient_id"})
_NAME = re.compile(r"^[^\x00-\x1f\x7f<>]{1,32}$")


class ViewerLink(BaseModel):
    """One configured viewer.

    Attributes
    ----------
    name : str
        Shown on the link (1-32 printable characters).
    url : str
        ``http(s)://`` template with ``{study_uid}``, ``{accession_number}`` or ``{patient_id}``.

    Raises
    ------
    pydantic.ValidationError
        A name or URL that is not valid, or a template naming anything else.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME.pattern)
    url: str = Field(pattern=r"^https?://\S+$", max_length=1000)

    @field_validator("url")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            names = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid URL template: {exc}") from None
        unknown = names - PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; use {sorted(PLACEHOLDERS)}")
        return value

    def for_study(self, study_uid: str, accession_number: str | None, patient_id: str | None) -> str | None:
        """The link for one study, or None when the template needs a value the study lacks."""
        values = {"study_uid": study_uid, "accession_number": accession_number, "patient_id": patient_id}
        names = {field for _, field, _, _ in string.Formatter().parse(self.url) if field is not None}
        if any(not values[name] for name in names):
            return None
        return self.url.format(**{name: quote(str(values[name]), safe="") for name in names})
