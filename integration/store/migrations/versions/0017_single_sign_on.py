"""single sign-on: identities from the OpenID provider, users in several sites, idle sessions

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled by the change that adds these tables (issue 20)


def downgrade() -> None:
    pass
