"""Single sign-on through the hospital's OpenID Connect provider: its settings, validated by pydantic only.

``PACSVLM_SSO`` names the provider and how its claims map to roles and sites, for example::

    {"issuer": "https://login.hospital.example/realms/radiology", "client_id": "pacs-vlm",
     "client_secret_file": "/run/secrets/oidc-client-secret", "display_name": "Hospital login",
     "roles": {"rad-staff": "radiologist", "pacs-admins": "admin", "tele-uploaders": "uploader"},
     "sites": {"site-north": ["NORTH"], "site-south": ["SOUTH"]}}

The client secret lives in a file (or, for a test, inline as a secret string), never in a log.  Role and site
claims may be a string or a list of strings (``groups``); several values that map to roles give the most
capable role (admin, radiologist, uploader), and every value that maps to sites adds its sites.  Like the
other allowlists it lives beside the settings so the settings need no store or web code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

#: A role a claim value may map to (``users.role``).
MappedRole = Literal["admin", "radiologist", "uploader"]
#: The roles from most to least capable: a person whose claims map to several gets the first.
ROLE_PRECEDENCE: tuple[MappedRole, ...] = ("admin", "radiologist", "uploader")
_CLAIM = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
_SITE_CODE = Annotated[str, Field(min_length=1, max_length=16)]


class SingleSignOn(BaseModel):
    """The OpenID Connect provider people sign in through, and how its claims become a user.

    Attributes
    ----------
    issuer : str
        The provider's issuer URL; its discovery document is ``<issuer>/.well-known/openid-configuration``.
    client_id : str
        This application's client id at the provider.
    client_secret, client_secret_file
        The client secret, inline (a secret string) or, better, in a file; exactly one.
    scopes : list of str
        Scopes asked for; ``openid`` is required.
    display_name : str
        The provider's name on the sign-in page ("Sign in with <display_name>").
    username_claim : str
        The claim that becomes the username (``preferred_username``).
    person_name_claim : str
        The claim with the person's name that signed reports carry (``name``: "Jane Doe" becomes the DICOM
        person name ``Doe^Jane``; a value that already holds ``^`` is taken as it is).
    role_claim, roles
        The claim holding role values, and which value gives which role.
    site_claim, sites
        The claim holding site values, and which value gives which site codes.
    redirect_uri : str, optional
        The callback URL registered at the provider; by default this server's ``/login/sso/callback`` as the
        request reached it (set it behind a proxy that rewrites the host).
    provider_sign_out : bool
        Signing out of pacs-vlm also ends the person's session at the provider (OpenID Connect RP-initiated
        logout, when its discovery document offers an ``end_session_endpoint``); on by default, so that the
        next person at a shared reading-room workstation is not signed in as the last one.
    post_sign_out_uri : str, optional
        Where the provider sends the browser back after its sign-out (registered at the provider as a
        post-logout redirect URI); by default this server's ``/login`` as the request reached it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: Annotated[str, Field(pattern=r"^https?://[^\s?#]+$", max_length=255)]
    client_id: Annotated[str, Field(min_length=1, max_length=255)]
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    scopes: list[_CLAIM] = Field(default_factory=lambda: ["openid", "profile", "email"])
    display_name: Annotated[str, Field(min_length=1, max_length=64)] = "single sign-on"
    username_claim: _CLAIM = "preferred_username"
    person_name_claim: _CLAIM = "name"
    role_claim: _CLAIM = "groups"
    roles: dict[Annotated[str, Field(min_length=1, max_length=255)], MappedRole] = Field(default_factory=dict)
    site_claim: _CLAIM = "groups"
    sites: dict[Annotated[str, Field(min_length=1, max_length=255)], list[_SITE_CODE]] = Field(default_factory=dict)
    redirect_uri: Annotated[str, Field(pattern=r"^https?://[^\s#]+$", max_length=2000)] | None = None
    provider_sign_out: bool = True
    post_sign_out_uri: Annotated[str, Field(pattern=r"^https?://[^\s#]+$", max_length=2000)] | None = None

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("the scopes must include openid")
        return value

    @field_validator("sites")
    @classmethod
    def _upper_site_codes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {claim: [code.strip().upper() for code in codes] for claim, codes in value.items()}

    @model_validator(mode="after")
    def _one_secret(self) -> SingleSignOn:
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError("give the client secret as exactly one of client_secret or client_secret_file")
        if not self.roles:
            raise ValueError("map at least one claim value to a role (roles), or nobody can sign in")
        return self

    def secret(self) -> str:
        """Return the client secret.

        Raises
        ------
        OSError
            When the secret's file cannot be read.
        """
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        assert self.client_secret_file is not None  # the validator requires one of the two
        return self.client_secret_file.read_text().strip()

    def role_for(self, values: list[str]) -> MappedRole | None:
        """The most capable role the claim values map to, or None."""
        mapped = {self.roles[value] for value in values if value in self.roles}
        return next((role for role in ROLE_PRECEDENCE if role in mapped), None)

    def sites_for(self, values: list[str]) -> list[str]:
        """The site codes the claim values map to, sorted, without repeats."""
        return sorted({code for value in values for code in self.sites.get(value, [])})


def claim_values(claims: dict[str, object], name: str) -> list[str]:
    """A claim as a list of strings: a string is one value, a list keeps its strings, anything else none."""
    value = claims.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []
