"""tenants: take one Alembic release to every tenant database of a database-per-customer fleet.

The library is the product; the Typer CLI in :mod:`tenants.cli` is a thin layer over the functions in
:mod:`tenants.api`, which take one explicit :class:`~tenants.config.Settings` and return report objects.
"""

__version__ = "0.1.0"
