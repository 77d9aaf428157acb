"""create users

Revision ID: 0001_users
Revises:
Create Date: 2026-11-26 09:00:00

The tenant's user accounts. Guarded: a tenant that already has the table or the index (created by hand,
or restored) is left as it is.
"""
from collections.abc import Sequence

import sqlalchemy as sa

from tenants import guards

revision: str = "0001_users"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    guards.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
    )
    guards.create_index("ux_users_email", "users", ["email"], unique=True)


def downgrade() -> None:
    guards.drop_index("ux_users_email", "users")
    guards.drop_table("users")
