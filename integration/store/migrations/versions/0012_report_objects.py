"""report objects viewers read (TID 1500, KOS), the scope of a session (viewer bearer tokens)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 19:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("tid1500", "kos", name="report_object_kind", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=True),
        sa.Column("created_at", integration.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_report_objects_report_id_reports"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["revision_id"],
            ["report_revisions.id"],
            name=op.f("fk_report_objects_revision_id_report_revisions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_report_objects_sop_instance_uid")),
        sa.UniqueConstraint("subject", "kind", name="uq_report_objects_subject_kind"),
    )
    with op.batch_alter_table("report_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_objects_report_id"), ["report_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_report_objects_study_uid"), ["study_uid"], unique=False)

    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=16), server_default="session", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.drop_column("scope")

    with op.batch_alter_table("report_objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_objects_study_uid"))
        batch_op.drop_index(batch_op.f("ix_report_objects_report_id"))

    op.drop_table("report_objects")
