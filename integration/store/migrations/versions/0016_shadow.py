"""shadow mode: drafts by a candidate model hidden from reviewers, and their agreement with the signed reports

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

#: Enum CHECK constraints that gain a value: table -> (constraint, column, values before, value added).
_ENUMS = {
    "studies": (
        "study_state",
        "state",
        ("receiving", "stable", "queued", "running", "drafted", "signed", "failed", "superseded", "cancelled", "held"),
        "skipped",
    ),
    "reports": ("report_purpose", "purpose", ("primary", "second_opinion"), "shadow"),
}


def _enum_checks(*, widen: bool) -> None:
    for table, (name, column, before, added) in _ENUMS.items():
        values = (*before, added) if widen else before
        listed = ", ".join(f"'{v}'" for v in values)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f"ck_{table}_{name}"), type_="check")
            batch_op.create_check_constraint(op.f(f"ck_{table}_{name}"), f"{column} IN ({listed})")


def upgrade() -> None:
    _enum_checks(widen=True)
    op.create_table('shadow_outcomes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('model_id', sa.String(length=255), nullable=False),
    sa.Column('model_revision', sa.String(length=128), nullable=False),
    sa.Column('prompt_version', sa.String(length=64), nullable=False),
    sa.Column('draft_findings', sa.Integer(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('edited', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('added', sa.Integer(), nullable=False),
    sa.Column('edit_distance', sa.Integer(), nullable=False),
    sa.Column('text_similarity', sa.Float(), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_shadow_outcomes_report_id_reports'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['revision_id'], ['report_revisions.id'], name=op.f('fk_shadow_outcomes_revision_id_report_revisions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_shadow_outcomes_site_id_sites'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shadow_outcomes')),
    sa.UniqueConstraint('report_id', 'revision_id', name='uq_shadow_outcomes_report_id_revision_id')
    )
    with op.batch_alter_table('shadow_outcomes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shadow_outcomes_report_id'), ['report_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_outcomes_revision_id'), ['revision_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_outcomes_site_id'), ['site_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('shadow_outcomes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shadow_outcomes_site_id'))
        batch_op.drop_index(batch_op.f('ix_shadow_outcomes_revision_id'))
        batch_op.drop_index(batch_op.f('ix_shadow_outcomes_report_id'))
    op.drop_table('shadow_outcomes')
    # rows in the new states would break the narrower checks: shadow drafts go, skipped studies wait for a person
    op.execute("DELETE FROM reports WHERE purpose = 'shadow'")
    op.execute("UPDATE studies SET state = 'held' WHERE state = 'skipped'")
    _enum_checks(widen=False)
