"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Runs on every tenant database (SQLite, PostgreSQL, SQL Server), each revision in its own transaction.
Keep it safe to re-run on a database that already has the change: write each DDL step with
tenants.guards instead of op (guards.create_table, add_column, create_index, drop_column, drop_index,
drop_table: same arguments; offline T-SQL gets an IF OBJECT_ID/COL_LENGTH/sys.indexes check), ask
guards.has_* before other steps, and write backfills that are idempotent.
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
