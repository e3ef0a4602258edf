"""study role and issuer, prior searches, study priors

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('prior_searches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.Enum('pending', 'running', 'done', 'failed', name='prior_search_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_prior_searches_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prior_searches')),
    sa.UniqueConstraint('study_id', name=op.f('uq_prior_searches_study_id'))
    )
    with op.batch_alter_table('prior_searches', schema=None) as batch_op:
        batch_op.create_index('ix_prior_searches_state_started_at', ['state', 'started_at'], unique=False)

    op.create_table('study_priors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('prior_study_id', sa.Integer(), nullable=True),
    sa.Column('prior_study_uid', sa.String(length=64), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('state', sa.Enum('found', 'fetching', 'ready', 'unavailable', name='prior_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('modality', sa.String(length=64), nullable=True),
    sa.Column('description', sa.String(length=64), nullable=True),
    sa.Column('accession', sa.String(length=16), nullable=True),
    sa.Column('report_text', sa.Text(), nullable=True),
    sa.Column('report_source', sa.String(length=8), nullable=True),
    sa.Column('series_uids', sa.JSON(), nullable=False),
    sa.Column('instances', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['prior_study_id'], ['studies.id'], name=op.f('fk_study_priors_prior_study_id_studies'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_study_priors_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study_priors')),
    sa.UniqueConstraint('study_id', 'prior_study_uid', name='uq_study_priors_study_id_prior_study_uid')
    )
    with op.batch_alter_table('study_priors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_priors_prior_study_id'), ['prior_study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_priors_study_id'), ['study_id'], unique=False)

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('role', sa.String(length=8), server_default='current', nullable=False))
        batch_op.create_index('ix_studies_patient_id_site_id', ['patient_id', 'site_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index('ix_studies_patient_id_site_id')
        batch_op.drop_column('role')
        batch_op.drop_column('issuer_of_patient_id')

    with op.batch_alter_table('study_priors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_priors_study_id'))
        batch_op.drop_index(batch_op.f('ix_study_priors_prior_study_id'))

    op.drop_table('study_priors')
    with op.batch_alter_table('prior_searches', schema=None) as batch_op:
        batch_op.drop_index('ix_prior_searches_state_started_at')

    op.drop_table('prior_searches')