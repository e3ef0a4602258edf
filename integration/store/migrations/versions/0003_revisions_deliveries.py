"""sr uids, report revisions, deliveries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 21:48:36.600134
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('report_revisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('signed', 'rejected', name='revision_status', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('findings', sa.JSON(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('organization', sa.String(length=128), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sr_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('sr_series_uid', sa.String(length=64), nullable=True),
    sa.Column('sr_path', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_report_revisions_report_id_reports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_revisions')),
    sa.UniqueConstraint('report_id', 'version', name='uq_report_revisions_report_id_version'),
    sa.UniqueConstraint('sr_sop_instance_uid', name=op.f('uq_report_revisions_sr_sop_instance_uid'))
    )
    with op.batch_alter_table('report_revisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_revisions_report_id'), ['report_id'], unique=False)

    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=True),
    sa.Column('subject', sa.String(length=64), nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('document', sa.String(length=8), nullable=False),
    sa.Column('state', sa.Enum('pending', 'delivered', 'dead_letter', name='delivery_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_deliveries_report_id_reports'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['revision_id'], ['report_revisions.id'], name=op.f('fk_deliveries_revision_id_report_revisions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    sa.UniqueConstraint('subject', 'destination', 'document', name='uq_deliveries_subject_destination_document')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deliveries_report_id'), ['report_id'], unique=False)
        batch_op.create_index('ix_deliveries_state_next_attempt_at', ['state', 'next_attempt_at'], unique=False)

    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sr_sop_instance_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('sr_series_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('sr_path', sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_reports_sr_sop_instance_uid'), ['sr_sop_instance_uid'])



def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_reports_sr_sop_instance_uid'), type_='unique')
        batch_op.drop_column('sr_path')
        batch_op.drop_column('sr_series_uid')
        batch_op.drop_column('sr_sop_instance_uid')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_state_next_attempt_at')
        batch_op.drop_index(batch_op.f('ix_deliveries_report_id'))

    op.drop_table('deliveries')
    with op.batch_alter_table('report_revisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_revisions_report_id'))

    op.drop_table('report_revisions')
