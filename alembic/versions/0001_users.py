"""create users

Revision ID: 0001_users
Revises:
Create Date: 2026-11-26 09:00:00

The tenant's user accounts. Guarded: a tenant that already has the table (created by hand, or restored)
is left as it is.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from tenants import guards

revision: str = "0001_users"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if not guards.has_table("users"):
        op.create_table(
            "users",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("email", sa.String(320), nullable=False),
            sa.Column("display_name", sa.String(200), nullable=True),
            sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        )
    if not guards.has_index("users", "ux_users_email"):
        op.create_index("ux_users_email", "users", ["email"], unique=True)


def downgrade() -> None:
    if guards.has_index("users", "ux_users_email", offline=True):
        op.drop_index("ux_users_email", table_name="users")
    if guards.has_table("users", offline=True):
        op.drop_table("users")
