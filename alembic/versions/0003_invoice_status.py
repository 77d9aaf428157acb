"""add invoices.status with a default, backfilled from paid_at

Revision ID: 0003_invoice_status
Revises: 0002_invoices
Create Date: 2026-11-26 09:20:00

The column arrives with a server default ('open') so existing rows are valid at once; the backfill then
marks paid invoices 'paid'. Both steps are idempotent: the column is only added when missing, and the
UPDATE only touches rows that still need it.
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from tenants import guards

revision: str = "0003_invoice_status"
down_revision: str | Sequence[str] | None = "0002_invoices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    guards.add_column("invoices", sa.Column("status", sa.String(20), nullable=False, server_default="open"))
    op.execute(
        "UPDATE invoices SET status = 'paid' WHERE paid_at IS NOT NULL AND status <> 'paid'"
    )


def downgrade() -> None:
    # SQL Server keeps a column's default in a named constraint that must go first. (On SQLite the helper
    # rebuilds the table: batch mode.)
    guards.drop_column("invoices", "status", mssql_drop_default=True)
