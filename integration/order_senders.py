"""Who may send orders: the HL7 sender allowlist (``PACSVLM_HL7_SENDERS``), validated by pydantic only.

Keyed by ``<MSH-3 sending application>^<MSH-4 sending facility>`` (``^<facility>`` may be left out to take
any facility of that application)::

    {"EPIC_RIS^NORTH_HOSPITAL": {"hosts": ["10.0.0.20"], "site": "NORTH"},
     "LEGACY_RIS": {}}

A message from a sender not listed, or from a host its entry does not name, is answered AR and changes
nothing.  Like the calling-AE allowlist, it lives beside the settings so the settings need no order code.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: ``APPLICATION`` or ``APPLICATION^FACILITY`` (HD namespace ids: printable, no HL7 delimiters).
SENDER_KEY = re.compile(r"^[^\^|~\\&\s][^\^|~\\&]{0,63}(\^[^\^|~\\&\s][^\^|~\\&]{0,63})?$")


class OrderSender(BaseModel):
    """One RIS allowed to send orders.

    Attributes
    ----------
    hosts : list of str
        Addresses it may connect from; empty means any address.
    site : str, optional
        Code of the site whose studies its orders are for (orders then carry that site).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hosts: list[str] = Field(default_factory=list)
    site: Annotated[str, Field(min_length=1, max_length=16)] | None = None


def check_sender_keys(value: dict[str, OrderSender]) -> dict[str, OrderSender]:
    """Validate the allowlist's keys; raise ValueError naming a bad one."""
    for key in value:
        if not SENDER_KEY.fullmatch(key):
            raise ValueError(
                f"not an HL7 sender: {key!r} (write <sending application> or <sending application>^<facility>)"
            )
    return value
