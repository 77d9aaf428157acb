"""The `tenants` command's entry point: the console script (``tenants = "tenants.__main__:main"``) and
``python -m tenants``. Light on purpose: it imports the CLI inside :func:`main`, never at the top.

Why (issue 13):

* Every worker process of a parallel run imports the main module again, as ``__mp_main__`` (multiprocessing's
  rule for a main *script*; a main module named ``*.__main__`` is exempt). The forkserver's ``"__main__"``
  preload was meant to do that once for all workers, but on Python 3.11 it is a no-op (the forkserver looks for
  a ``main_path`` key its parent never sends). A console script that imported :mod:`tenants.cli` at the top so
  made each worker import Typer, rich and the whole CLI before its first tenant: about 0.25 s of CPU per worker.
  Now a worker re-imports this module only: the standard library.
* ``tenants upgrade`` starts the workers' forkserver here, before the CLI is imported: the forkserver's imports
  (SQLAlchemy, Alembic, the drivers: about 0.3 s) then overlap this process's own instead of following them,
  and the first tenant with work finds its worker ready. The configuration is not read yet, so the forkserver
  imports every installed dialect's driver (:mod:`tenants.dialects.workers`), and a run that turns out to need
  no worker (``concurrency = 1`` in the configuration, one tenant; on SQL Server and SQLite a fleet at the
  target, which the parent reads itself) leaves it idle; it ends with this process.
"""

from __future__ import annotations

import gc
import sys

# The root options that take a value (tenants.cli's callback), to find the command word on the command line.
_ROOT_OPTIONS_WITH_VALUE = frozenset({"--config", "-c", "--env", "-e"})


def main() -> None:
    if _forks_workers(sys.argv[1:]):
        try:
            from tenants.engine.forkserver import start_early

            start_early(concurrency=2, preload=("tenants.dialects.workers",))  # 2: any parallel run
        except Exception:  # noqa: BLE001 - only a head start: the run starts its forkserver itself, and reports
            pass
    from tenants.cli import main as cli_main

    try:
        cli_main()
    finally:
        # The process is ending: its last garbage collections would traverse every object of SQLAlchemy,
        # Alembic and rich for nothing the OS does not reclaim anyway (about 80 ms of every run, measured).
        # Frozen objects are skipped; atexit handlers and stream flushing still run as usual.
        gc.freeze()


def _forks_workers(argv: list[str]) -> bool:
    """Whether this command line is a ``tenants upgrade`` that may fork workers: not its help, not
    ``--concurrency 1``. A guess from the words alone (the CLI parses them properly later): a wrong "yes"
    costs an idle forkserver, a wrong "no" the head start."""
    words = iter(argv)
    command = None
    for word in words:
        if word in _ROOT_OPTIONS_WITH_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            command = word
            break
    if command != "upgrade":
        return False
    rest = list(words)
    serial = any(a in ("--concurrency", "-j") and b == "1" for a, b in zip(rest, rest[1:], strict=False))
    return not serial and not {"--concurrency=1", "-j1", "--help", "-h"} & set(rest)


if __name__ == "__main__":
    main()
