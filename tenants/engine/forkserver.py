"""The forkserver the workers of a parallel run are forked from (:mod:`tenants.engine.fanout.process`).

A module of its own, importing nothing heavy: the CLI starts the forkserver before it loads the library
(:func:`start_early`), so the forkserver's own imports (SQLAlchemy, Alembic, the driver: about half a second)
overlap the parent's instead of delaying the first tenant with work (issue 13)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
import sys
import threading


def start_forkserver() -> None:
    """Start the forkserver now, with SIGINT and SIGTERM ignored: a process inherits ignored signals through
    exec (not blocked ones: the child's mask is reset), and Python keeps them ignored, so the forkserver ignores
    them from its first instruction, and every worker it forks from its birth. A Ctrl-C while the forkserver
    imports (the first second of a run) so kills neither it (with a traceback) nor a worker before its
    initializer runs (every tenant "failed: the worker pool broke"); this process notes it and the run skips
    the tenants. The price: a signal in the few milliseconds of the fork and exec is lost here (press again)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def start_early(concurrency: int, preload: tuple[str, ...] = ()) -> None:
    """Start the forkserver now, for a run that will likely fork workers (``concurrency`` > 1): it imports
    SQLAlchemy and Alembic once (about 0.3 s) before it can fork the first worker, and started here, before
    discovery (round trips to the server, or Azure's API), that happens while the parent waits on the network
    instead of after the first tenant with work is found (issue 13: it was 0.3 s of a 40-tenant upgrade's
    critical path). A run that needs no worker (a fleet at the target) started it anyway; one that turns out
    serial leaves it idle, and it ends with this process. Only from the main thread (signals are set around
    the start, see start_forkserver): a library caller's thread leaves it to the run, as before.
    ``preload``: more modules for the forkserver to import once for every worker (the dialect's driver,
    :attr:`tenants.dialects.Dialect.worker_modules`), instead of each worker on its first tenant."""
    if concurrency > 1 and threading.current_thread() is threading.main_thread():
        forkserver_context(preload)
        start_forkserver()


def forkserver_context(extra: tuple[str, ...] = ()) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    # The forkserver imports these once and forks every worker from itself. "__main__" included, for Pythons
    # where it works (on 3.11 the forkserver never gets the main path, so every worker re-imports the main
    # script itself: hence a light console script, see tenants.__main__). (Only a main module that is a file:
    # one read from stdin cannot be imported again, anywhere.)
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    real_main = bool(main_file) and os.path.isfile(main_file)
    # orphans first: it makes the forkserver die with this process (see there).
    preload = ["tenants.engine.fanout.orphans", "tenants.engine.fanout.process", *extra]
    context.set_forkserver_preload(["__main__", *preload] if real_main else preload)
    return context
