"""create invoices, owned by users

Revision ID: 0002_invoices
Revises: 0001_users
Create Date: 2026-11-26 09:10:00

A foreign key to users; deleting a user deletes their invoices.
"""
from collections.abc import Sequence

import sqlalchemy as sa

from tenants import guards

revision: str = "0002_invoices"
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    guards.create_table(
        "invoices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", name="fk_invoices_user_id_users", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.String(40), nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="EUR"),
        sa.Column("issued_at", sa.DateTime, nullable=False),
        sa.Column("paid_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("number", name="uq_invoices_number"),
    )


def downgrade() -> None:
    guards.drop_table("invoices")
