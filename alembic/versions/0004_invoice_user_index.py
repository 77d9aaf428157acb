"""index invoices by user and issue date

Revision ID: 0004_invoice_user_index
Revises: 0003_invoice_status
Create Date: 2026-11-26 09:30:00

Serves "a customer's invoices, newest first". Built ONLINE on SQL Server (mssql_online=True): invoices is
a large table of every tenant, and a plain CREATE INDEX would block writes to it for the whole build.
"""
from collections.abc import Sequence

from tenants import guards

revision: str = "0004_invoice_user_index"
down_revision: str | Sequence[str] | None = "0003_invoice_status"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    guards.create_index("ix_invoices_user_id_issued_at", "invoices", ["user_id", "issued_at"], mssql_online=True)


def downgrade() -> None:
    guards.drop_index("ix_invoices_user_id_issued_at", "invoices")
