"""purge totals: what purges removed, kept so counters derived from rows never go down

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled by the change that adds these tables (issue 20)


def downgrade() -> None:
    pass
