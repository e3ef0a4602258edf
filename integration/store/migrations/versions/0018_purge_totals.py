"""purge totals: what purges removed, kept so counters derived from rows never go down

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "purge_totals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.String(length=2000), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purge_totals")),
        sa.UniqueConstraint("sample", "labels", name="uq_purge_totals_sample_labels"),
    )


def downgrade() -> None:
    op.drop_table("purge_totals")
