"""critical alerts and their notifications, the study's critical reason

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-09 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('critical_alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('codes', sa.JSON(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('state', sa.Enum('open', 'acknowledged', 'closed', name='alert_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('raised_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('due_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=128), nullable=True),
    sa.Column('acknowledged_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('closed_reason', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_critical_alerts_report_id_reports'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_critical_alerts_site_id_sites'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_critical_alerts_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_critical_alerts')),
    sa.UniqueConstraint('report_id', name=op.f('uq_critical_alerts_report_id'))
    )
    with op.batch_alter_table('critical_alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_critical_alerts_site_id'), ['site_id'], unique=False)
        batch_op.create_index('ix_critical_alerts_state_due_at', ['state', 'due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_critical_alerts_study_id'), ['study_id'], unique=False)

    op.create_table('alert_notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=False),
    sa.Column('contact', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('state', sa.Enum('pending', 'sent', 'dead_letter', 'cancelled', name='notification_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['critical_alerts.id'], name=op.f('fk_alert_notifications_alert_id_critical_alerts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_notifications')),
    sa.UniqueConstraint('alert_id', 'level', name='uq_alert_notifications_alert_id_level')
    )
    with op.batch_alter_table('alert_notifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_notifications_alert_id'), ['alert_id'], unique=False)
        batch_op.create_index('ix_alert_notifications_state_next_attempt_at', ['state', 'next_attempt_at'], unique=False)

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('critical_reason', sa.String(length=128), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('critical_reason')

    with op.batch_alter_table('alert_notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_notifications_state_next_attempt_at')
        batch_op.drop_index(batch_op.f('ix_alert_notifications_alert_id'))

    op.drop_table('alert_notifications')
    with op.batch_alter_table('critical_alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_critical_alerts_study_id'))
        batch_op.drop_index('ix_critical_alerts_state_due_at')
        batch_op.drop_index(batch_op.f('ix_critical_alerts_site_id'))

    op.drop_table('critical_alerts')
