"""the reading day: study claims, telemedicine upload cases, when a report was first read

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 23:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_claims",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("claimed_at", integration.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", integration.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_study_claims_study_id_studies"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_study_claims_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("study_id", name=op.f("pk_study_claims")),
    )
    with op.batch_alter_table("study_claims", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_claims_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_study_claims_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "upload_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("uploader_id", sa.Integer(), nullable=True),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("clinical_question", sa.Text(), nullable=False),
        sa.Column("laterality", sa.String(length=1), nullable=True),
        sa.Column("body_part", sa.String(length=16), nullable=False),
        sa.Column("created_at", integration.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", integration.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_upload_cases_study_id_studies"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["uploader_id"], ["users.id"], name=op.f("fk_upload_cases_uploader_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_upload_cases_site_id_sites"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upload_cases")),
        sa.UniqueConstraint("study_id", name=op.f("uq_upload_cases_study_id")),
    )
    with op.batch_alter_table("upload_cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_upload_cases_uploader_id"), ["uploader_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_upload_cases_site_id"), ["site_id"], unique=False)

    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("read_at", integration.store.tables.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_column("read_at")

    with op.batch_alter_table("upload_cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_cases_site_id"))
        batch_op.drop_index(batch_op.f("ix_upload_cases_uploader_id"))
    op.drop_table("upload_cases")

    with op.batch_alter_table("study_claims", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_claims_expires_at"))
        batch_op.drop_index(batch_op.f("ix_study_claims_user_id"))
    op.drop_table("study_claims")
