"""retention: the marks of purges under way

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-12 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_purges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column(
            "scope",
            sa.Enum("instances", "study", name="purge_scope", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("marked_at", integration.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("study_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_study_purges_study_id_studies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_purges")),
        sa.UniqueConstraint("study_id", name=op.f("uq_study_purges_study_id")),
    )


def downgrade() -> None:
    op.drop_table("study_purges")
