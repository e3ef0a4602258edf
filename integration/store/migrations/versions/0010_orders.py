"""orders, inbound messages, performed steps, study order link, new states

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

#: Enum CHECK constraints that gain values: table -> (constraint, column, values before, values after).
_ENUMS = {
    "studies": (
        "study_state",
        "state",
        ("receiving", "stable", "queued", "running", "drafted", "signed", "failed", "superseded"),
        ("cancelled", "held"),
    ),
    "analysis_jobs": ("job_state", "state", ("queued", "running", "done", "failed", "superseded"), ("cancelled",)),
    "reports": ("report_status", "status", ("draft", "superseded", "signed", "rejected"), ("withdrawn",)),
    "deliveries": ("delivery_state", "state", ("pending", "delivered", "dead_letter"), ("cancelled",)),
}


def _enum_checks(*, widen: bool) -> None:
    for table, (name, column, before, added) in _ENUMS.items():
        values = before + added if widen else before
        listed = ", ".join(f"'{v}'" for v in values)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f"ck_{table}_{name}"), type_="check")
            batch_op.create_check_constraint(op.f(f"ck_{table}_{name}"), f"{column} IN ({listed})")


def upgrade() -> None:
    op.create_table('performed_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('instance_uids', sa.JSON(), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_performed_steps')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_performed_steps_sop_instance_uid'))
    )
    with op.batch_alter_table('performed_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_performed_steps_study_uid'), ['study_uid'], unique=False)

    op.create_table('orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), server_default='', nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=True),
    sa.Column('filler_order_number', sa.String(length=64), nullable=True),
    sa.Column('procedure_code', sa.String(length=64), nullable=True),
    sa.Column('procedure_coding_system', sa.String(length=64), nullable=True),
    sa.Column('procedure_text', sa.String(length=256), nullable=True),
    sa.Column('indication', sa.Text(), nullable=True),
    sa.Column('priority', sa.String(length=8), server_default='routine', nullable=False),
    sa.Column('ordering_provider', sa.String(length=256), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('scheduled_at', integration.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('sender', sa.String(length=128), nullable=False),
    sa.Column('fhir_id', sa.String(length=64), nullable=True),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_orders_site_id_sites'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('accession_number', 'patient_id', 'issuer_of_patient_id', name='uq_orders_key'),
    sa.UniqueConstraint('fhir_id', name=op.f('uq_orders_fhir_id'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_accession_number', ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_site_id'), ['site_id'], unique=False)

    op.create_table('inbound_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sender', sa.String(length=128), nullable=False),
    sa.Column('control_id', sa.String(length=199), nullable=False),
    sa.Column('message_type', sa.String(length=16), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('ack_text', sa.Text(), nullable=True),
    sa.Column('order_id', sa.Integer(), nullable=True),
    sa.Column('received_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_inbound_messages_order_id_orders'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_messages')),
    sa.UniqueConstraint('sender', 'control_id', name='uq_inbound_messages_sender_control_id')
    )
    op.create_table('order_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('control', sa.String(length=2), nullable=False),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('sender', sa.String(length=128), nullable=False),
    sa.Column('message_id', sa.String(length=199), nullable=True),
    sa.Column('received_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_order_events_order_id_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_order_events'))
    )
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_events_order_id'), ['order_id'], unique=False)

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('order_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('order_problem', sa.String(length=128), nullable=True))
        batch_op.create_index(batch_op.f('ix_studies_order_id'), ['order_id'], unique=False)
        batch_op.create_index('ix_studies_accession_number', ['accession_number'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_studies_order_id_orders'), 'orders', ['order_id'], ['id'], ondelete='SET NULL')
    _enum_checks(widen=True)



def downgrade() -> None:
    # Rows in the new states have no meaning before this revision: they become the nearest old state.
    op.execute("UPDATE studies SET state = 'failed' WHERE state IN ('cancelled', 'held')")
    op.execute("UPDATE analysis_jobs SET state = 'superseded' WHERE state = 'cancelled'")
    op.execute("UPDATE reports SET status = 'rejected' WHERE status = 'withdrawn'")
    op.execute("UPDATE deliveries SET state = 'dead_letter' WHERE state = 'cancelled'")
    _enum_checks(widen=False)
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_studies_order_id_orders'), type_='foreignkey')
        batch_op.drop_index('ix_studies_accession_number')
        batch_op.drop_index(batch_op.f('ix_studies_order_id'))
        batch_op.drop_column('order_problem')
        batch_op.drop_column('order_id')

    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_events_order_id'))

    op.drop_table('order_events')
    op.drop_table('inbound_messages')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_site_id'))
        batch_op.drop_index('ix_orders_accession_number')

    op.drop_table('orders')
    with op.batch_alter_table('performed_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_performed_steps_study_uid'))

    op.drop_table('performed_steps')
