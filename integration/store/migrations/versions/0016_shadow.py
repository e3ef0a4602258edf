"""shadow mode: drafts by a candidate model hidden from reviewers, and their agreement with the signed reports

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled by the change that adds these tables (issue 20)


def downgrade() -> None:
    pass
