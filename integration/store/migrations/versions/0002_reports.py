"""reports: drafts per study version, model and prompt

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 21:10:44.479457
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('study_version', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('draft', 'superseded', 'signed', 'rejected', name='report_status', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('ai_generated', sa.Boolean(), nullable=False),
    sa.Column('verification', sa.String(length=16), nullable=False),
    sa.Column('model_id', sa.String(length=255), nullable=False),
    sa.Column('model_revision', sa.String(length=128), nullable=False),
    sa.Column('model_family', sa.String(length=32), nullable=False),
    sa.Column('prompt_version', sa.String(length=64), nullable=False),
    sa.Column('structured', sa.Boolean(), nullable=False),
    sa.Column('findings', sa.JSON(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('raw_output', sa.Text(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('tokens_in', sa.Integer(), nullable=False),
    sa.Column('tokens_out', sa.Integer(), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['analysis_jobs.id'], name=op.f('fk_reports_job_id_analysis_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_reports_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports')),
    sa.UniqueConstraint('study_id', 'study_version', 'model_id', 'model_revision', 'prompt_version', name='uq_reports_draft_key')
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_study_id'), ['study_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_study_id'))
        batch_op.drop_index(batch_op.f('ix_reports_job_id'))

    op.drop_table('reports')
