"""review priority second opinions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 23:20:15.207202
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('review_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('finding', sa.Integer(), nullable=True),
    sa.Column('before', sa.Text(), nullable=True),
    sa.Column('after', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_review_changes_report_id_reports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_changes')),
    sa.UniqueConstraint('report_id', 'seq', name='uq_review_changes_report_id_seq')
    )
    with op.batch_alter_table('review_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_changes_report_id'), ['report_id'], unique=False)

    op.create_table('review_outcomes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('model_id', sa.String(length=255), nullable=False),
    sa.Column('model_revision', sa.String(length=128), nullable=False),
    sa.Column('prompt_version', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('draft_findings', sa.Integer(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('edited', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('added', sa.Integer(), nullable=False),
    sa.Column('edit_distance', sa.Integer(), nullable=False),
    sa.Column('text_similarity', sa.Float(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_review_outcomes_report_id_reports'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['revision_id'], ['report_revisions.id'], name=op.f('fk_review_outcomes_revision_id_report_revisions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_review_outcomes_site_id_sites'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_outcomes')),
    sa.UniqueConstraint('revision_id', name=op.f('uq_review_outcomes_revision_id'))
    )
    with op.batch_alter_table('review_outcomes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_outcomes_report_id'), ['report_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_review_outcomes_site_id'), ['site_id'], unique=False)

    with op.batch_alter_table('analysis_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_name', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('prompt_name', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('priority', sa.String(length=8), server_default='routine', nullable=False))
        batch_op.add_column(sa.Column('purpose', sa.String(length=16), server_default='primary', nullable=False))
        batch_op.add_column(sa.Column('requested_by', sa.String(length=64), nullable=True))

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.String(length=8), server_default='routine', nullable=False))
        batch_op.add_column(sa.Column('source', sa.String(length=8), server_default='dicom', nullable=False))
        batch_op.add_column(sa.Column('patient_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('patient_name', sa.String(length=192), nullable=True))
        batch_op.add_column(sa.Column('patient_birth_date', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('patient_sex', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('accession_number', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('study_date', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('study_description', sa.String(length=64), nullable=True))

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('person_name', sa.String(length=64), nullable=True))

    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_action_actor_at', ['action', 'actor', 'at'], unique=False)
        batch_op.create_index('ix_audit_events_action_source_at', ['action', 'source', 'at'], unique=False)
        batch_op.create_index('ix_audit_events_object_type_object_id', ['object_type', 'object_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_object_type_object_id')
        batch_op.drop_index('ix_audit_events_action_source_at')
        batch_op.drop_index('ix_audit_events_action_actor_at')

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('person_name')

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('study_description')
        batch_op.drop_column('study_date')
        batch_op.drop_column('accession_number')
        batch_op.drop_column('patient_sex')
        batch_op.drop_column('patient_birth_date')
        batch_op.drop_column('patient_name')
        batch_op.drop_column('patient_id')
        batch_op.drop_column('source')
        batch_op.drop_column('priority')

    with op.batch_alter_table('analysis_jobs', schema=None) as batch_op:
        batch_op.drop_column('requested_by')
        batch_op.drop_column('purpose')
        batch_op.drop_column('priority')
        batch_op.drop_column('prompt_name')
        batch_op.drop_column('model_name')

    with op.batch_alter_table('review_outcomes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_outcomes_site_id'))
        batch_op.drop_index(batch_op.f('ix_review_outcomes_report_id'))

    op.drop_table('review_outcomes')
    with op.batch_alter_table('review_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_changes_report_id'))

    op.drop_table('review_changes')
