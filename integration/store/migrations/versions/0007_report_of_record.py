"""report of record

One report of record per study: reports get a purpose (``primary`` or ``second_opinion``, from their
job's purpose), a second opinion may never be signed (CHECK), and a study has at most one signed report
(a partial unique index, on PostgreSQL and SQLite alike).

A database that already holds what these forbid (a signed second opinion, or two signed reports of one
study) is not changed behind anyone's back: the upgrade stops and names the reports, so that a person
decides which one is the report of record.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _refuse_parallel_finals() -> None:
    connection = op.get_bind()
    signed_opinions = connection.execute(sa.text(
        "SELECT reports.id FROM reports JOIN analysis_jobs ON reports.job_id = analysis_jobs.id"
        " WHERE reports.status = 'signed' AND analysis_jobs.purpose = 'second_opinion' ORDER BY reports.id"
    )).scalars().all()
    doubles = connection.execute(sa.text(
        "SELECT study_id FROM reports WHERE status = 'signed' GROUP BY study_id HAVING count(*) > 1"
        " ORDER BY study_id"
    )).scalars().all()
    if signed_opinions or doubles:
        raise RuntimeError(
            "cannot add the one-report-of-record constraints: signed second opinions (reports "
            f"{list(signed_opinions)}) or studies with more than one signed report (study ids {list(doubles)}). "
            "Decide which report is each study's report of record, mark the others 'rejected' "
            "(reports.status) and upgrade again."
        )


def upgrade() -> None:
    _refuse_parallel_finals()
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'purpose',
            sa.Enum('primary', 'second_opinion', name='report_purpose', native_enum=False, create_constraint=True,
                    length=16),
            server_default='primary',
            nullable=False,
        ))
    op.execute(
        "UPDATE reports SET purpose = 'second_opinion' WHERE job_id IN"
        " (SELECT id FROM analysis_jobs WHERE purpose = 'second_opinion')"
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_check_constraint(
            op.f('ck_reports_signed_is_primary'), "purpose = 'primary' OR status != 'signed'"
        )
        batch_op.create_index(
            'uq_reports_study_id_signed',
            ['study_id'],
            unique=True,
            sqlite_where=sa.text("status = 'signed'"),
            postgresql_where=sa.text("status = 'signed'"),
        )


def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index('uq_reports_study_id_signed')
        batch_op.drop_constraint(op.f('ck_reports_signed_is_primary'), type_='check')
        batch_op.drop_constraint(op.f('ck_reports_report_purpose'), type_='check')
        batch_op.drop_column('purpose')
