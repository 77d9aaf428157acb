"""Imported by the workers' forkserver when it starts before the configuration is read (:mod:`tenants.__main__`):
the modules every worker of each dialect needs on its first tenant (:attr:`~tenants.dialects.Dialect.worker_modules`:
the driver, SQLAlchemy's dialect), imported once here for all workers instead of by each. A dialect whose driver
is not installed is skipped: it cannot be the one in use."""

from __future__ import annotations

import importlib

from tenants.dialects import DIALECTS

for _dialect in DIALECTS.values():
    for _module in _dialect.worker_modules:
        try:
            importlib.import_module(_module)
        except ImportError:
            pass
