"""Who hears of a critical finding, and what counts as one: the settings of the safety net, validated by pydantic only.

``PACSVLM_CRITICAL_CATEGORIES`` lists the critical (actionable) result categories a draft finding is
matched against; unset, the defaults of ``integration/safety/critical.py`` apply (the commonly used ACR
actionable-findings categories).  ``PACSVLM_ALERT_CONTACTS`` is the escalation chain, in order: the first
contact whose sites include the study's is notified at once; a contact that has not acknowledged within
``PACSVLM_ALERT_ACK_MINUTES`` is followed by the next one::

    [{"name": "on-call radiologist", "channel": "email", "address": "oncall@hospital.example",
      "inside_hospital": true},
     {"name": "ED pager", "channel": "webhook", "address": "https://pager.hospital.example/hook"},
     {"name": "RIS", "channel": "hl7", "address": "ris-oru"}]

A channel not marked ``inside_hospital`` never receives the patient's name or identifiers (only the study's
link, category and accession-free wording).  Like the other allowlists it lives beside the settings so the
settings need no safety code.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

#: A category's code: lower-case letters, digits, '-' and '_'.
CATEGORY_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
#: An e-mail address as a contact's address (local@domain, no spaces or angle brackets).
EMAIL_ADDRESS = re.compile(r"^[^@\s<>,;]{1,64}@[^@\s<>,;]{1,255}$")
#: A webhook's URL.
WEBHOOK_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s]*)?$")


class CriticalCategory(BaseModel):
    """One critical (actionable) result category.

    Attributes
    ----------
    code : str
        Stable code, stored with alerts (``pneumothorax``).
    label : str
        Name as shown and notified (``Pneumothorax``).
    terms : list of str
        Phrases matched in a finding's text, case-insensitively, with negation and uncertainty handled
        ("no pneumothorax" does not match).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    label: Annotated[str, Field(min_length=1, max_length=96)]
    terms: Annotated[list[Annotated[str, Field(min_length=2, max_length=80)]], Field(min_length=1)]

    @field_validator("code")
    @classmethod
    def _code_valid(cls, value: str) -> str:
        if not CATEGORY_CODE.fullmatch(value):
            raise ValueError(f"not a category code: {value!r} (a-z, 0-9, '-', '_'; at most 48)")
        return value


class AlertContact(BaseModel):
    """One contact of the escalation chain.

    Attributes
    ----------
    name : str
        Who it is, as shown and audited ("on-call radiologist").
    channel : {"webhook", "email", "hl7"}
        How it is reached: an HTTP POST of JSON, an e-mail over SMTP (``PACSVLM_SMTP_*``), or an HL7 ORU
        to the RIS over MLLP.
    address : str
        The webhook's URL, the e-mail address, or the name of a configured destination of kind ``mllp``.
    inside_hospital : bool
        Whether the channel is inside the hospital: only then may a notification carry the patient's name.
    sites : list of str
        Site codes whose studies it covers; empty: every site.
    token : SecretStr, optional
        A webhook's bearer token.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64)]
    channel: Literal["webhook", "email", "hl7"]
    address: Annotated[str, Field(min_length=1, max_length=512)]
    inside_hospital: bool = False
    sites: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(default_factory=list)
    token: SecretStr | None = None

    @field_validator("address")
    @classmethod
    def _address_valid(cls, value: str, info: object) -> str:
        channel = getattr(info, "data", {}).get("channel")
        if channel == "webhook" and not WEBHOOK_URL.fullmatch(value):
            raise ValueError(f"a webhook contact's address is an http(s) URL, not {value!r}")
        if channel == "email" and not EMAIL_ADDRESS.fullmatch(value):
            raise ValueError(f"an e-mail contact's address is an e-mail address, not {value!r}")
        return value

    def covers(self, site: str | None) -> bool:
        """Whether this contact is told of a study of ``site`` (None: a study of no site)."""
        return not self.sites or (site is not None and site in self.sites)


def unique_contact_names(value: list[AlertContact]) -> list[AlertContact]:
    """Validate that contact names are unique (alerts record who was notified by name)."""
    names = [contact.name for contact in value]
    if len(set(names)) != len(names):
        raise ValueError("alert contacts need distinct names")
    return value


def unique_category_codes(value: list[CriticalCategory] | None) -> list[CriticalCategory] | None:
    """Validate that category codes are unique."""
    if value is not None and len({c.code for c in value}) != len(value):
        raise ValueError("critical categories need distinct codes")
    return value
