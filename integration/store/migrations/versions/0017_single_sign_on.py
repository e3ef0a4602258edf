"""single sign-on: identities from the OpenID provider, users in several sites, idle sessions

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-14 10:00:00.000000

Every user with a site gets that site in ``user_sites`` (``users.site_id`` stays, as the first site).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import integration.store.tables

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sso_sign_ins',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('state_hash', sa.String(length=64), nullable=False),
    sa.Column('browser_hash', sa.String(length=64), nullable=False),
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('code_verifier', sa.String(length=128), nullable=False),
    sa.Column('next_path', sa.String(length=2000), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sso_sign_ins')),
    sa.UniqueConstraint('state_hash', name=op.f('uq_sso_sign_ins_state_hash'))
    )
    with op.batch_alter_table('sso_sign_ins', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sso_sign_ins_expires_at'), ['expires_at'], unique=False)

    op.create_table('sso_identities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('issuer', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('created_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_sign_in_at', integration.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_sso_identities_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sso_identities')),
    sa.UniqueConstraint('issuer', 'subject', name=op.f('uq_sso_identities_issuer')),
    sa.UniqueConstraint('user_id', name=op.f('uq_sso_identities_user_id'))
    )
    op.create_table('user_sites',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_user_sites_site_id_sites'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_sites_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'site_id', name=op.f('pk_user_sites'))
    )
    with op.batch_alter_table('user_sites', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_sites_site_id'), ['site_id'], unique=False)
    op.execute("INSERT INTO user_sites (user_id, site_id) SELECT id, site_id FROM users WHERE site_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('user_sites', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_sites_site_id'))

    op.drop_table('user_sites')
    op.drop_table('sso_identities')
    with op.batch_alter_table('sso_sign_ins', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sso_sign_ins_expires_at'))

    op.drop_table('sso_sign_ins')
