"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Runs on every tenant database (SQLite, PostgreSQL, SQL Server), each revision in its own transaction.
Keep it safe to re-run on a database that already has the change: write each DDL step with
tenants.guards instead of op (guards.create_table, add_column, create_index, drop_column, drop_index,
drop_table: same arguments; offline T-SQL gets an IF OBJECT_ID/COL_LENGTH/sys.indexes check), ask
guards.has_* before other steps, and write backfills that are idempotent. Check it before you push:
`tenants check` (README, "Authoring a revision"). For example:

    def upgrade() -> None:
        guards.add_column("invoices", sa.Column("due_date", sa.Date, nullable=True))
        guards.create_index("ix_invoices_due_date", "invoices", ["due_date"], mssql_online=True)
        # a backfill that only touches the rows still to change: a rerun changes nothing
        op.execute("UPDATE invoices SET due_date = issued_at WHERE due_date IS NULL")

    def downgrade() -> None:
        guards.drop_index("ix_invoices_due_date", "invoices")
        guards.drop_column("invoices", "due_date")
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}
from tenants import guards

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: Union[str, Sequence[str], None] = ${repr(down_revision)}
branch_labels: Union[str, Sequence[str], None] = ${repr(branch_labels)}
depends_on: Union[str, Sequence[str], None] = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
