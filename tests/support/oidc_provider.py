"""A real OpenID Connect provider for the single sign-on tests: panva's ``oidc-provider`` under Node.

Why this one: it is OpenID Certified, runs offline once installed (``npm ci`` from the committed
``tests/support/oidc/package-lock.json``, done by ``make test``'s setup), and serves its own login and
consent pages, so the browser test signs in the way a person does.  Its development login accepts any
login name (the password is ignored); the account's claims come from a JSON file the test writes and may
change between sign-ins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import free_port, stop_process, wait_for_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc"


@dataclass
class OidcProvider:
    """``node provider.mjs`` on a free port, with one confidential client."""

    folder: Path
    redirect_uri: str
    client_id: str = "pacs-vlm"
    client_secret: str = "test-client-secret-0123456789"
    port: int = field(default_factory=free_port)
    #: The profile and group claims only in UserInfo, not in the ID token (as some providers do).
    claims_in_userinfo_only: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accounts_file(self) -> Path:
        return self.folder / "accounts.json"

    def set_accounts(self, accounts: dict[str, dict[str, Any]]) -> None:
        """Replace the accounts' claims (read at each sign-in)."""
        self.accounts_file.write_text(json.dumps(accounts))

    def start(self) -> OidcProvider:
        node = shutil.which("node")
        if node is None or not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.skip("node or tests/support/oidc/node_modules is missing: run `make test` (npm ci) first")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.accounts_file.exists():
            self.set_accounts({})
        log = (self.folder / "provider.log").open("ab")
        args = [str(self.port), self.client_id, self.client_secret, self.redirect_uri, str(self.accounts_file)]
        env = {**os.environ, "OIDC_CONFORM_ID_TOKEN": "1" if self.claims_in_userinfo_only else "0"}
        self.process = subprocess.Popen([node, "provider.mjs", *args], cwd=OIDC_DIR, stdout=log, stderr=log, env=env)
        wait_for_port("127.0.0.1", self.port, timeout=30)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def settings_json(self, **extra: Any) -> str:
        """``PACSVLM_SSO`` for the api: this provider, its client, and the test's role and site mapping."""
        value = {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "scopes": ["openid", "profile", "groups"],
            "display_name": "Test Hospital Login",
            "roles": {"rad": "radiologist", "admins": "admin", "uploaders": "uploader"},
            "sites": {"site-north": ["NORTH"], "site-south": ["SOUTH"], "site-east": ["EAST"]},
            **extra,
        }
        return json.dumps(value)
