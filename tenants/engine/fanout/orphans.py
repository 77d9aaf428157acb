"""No process of a run outlives the parent, whatever kills it (SIGKILL included; issue 11).

The worker processes are children of the forkserver, and the forkserver is a child of the parent. Python's
forkserver exits when the parent's end of its "alive" pipe closes, but it hands every worker a copy of that
end: after a SIGKILL of the parent, the forkserver, its resource tracker and every worker were still alive 50
minutes later. So each of them asks the kernel to SIGKILL it when its own parent dies: Linux's
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, in the worker initializer (parent: the forkserver) and when the forkserver
imports this module (parent: the ``tenants`` process). The chain does the rest: the parent dies, the kernel kills
the forkserver, which makes it kill the workers, whose connections close, so the server rolls back their
revisions in progress. (The resource tracker exits once the last process holding its pipe is gone.) Where
prctl is unavailable, a daemon thread polls ``os.getppid()`` and kills its process when the parent changes.

A caveat of PDEATHSIG: it fires when the *thread* that forked the process ends. The forkserver is started by
the thread running the first process fan-out of the process (see ``process._start_forkserver``); the CLI runs
it in the main thread. A library caller whose thread ends gets a new forkserver for its next run.
"""

from __future__ import annotations

import ctypes
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL = 0.5  # seconds between two looks at the parent, where the kernel cannot watch it


def die_with_parent() -> None:
    """SIGKILL this process when its parent process dies."""
    parent = os.getppid()
    if not _pdeathsig():
        threading.Thread(target=_watch, args=(parent,), name="tenants-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the kernel was asked to watch it
        os.kill(os.getpid(), signal.SIGKILL)


def _pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc to speak of (a static interpreter?): the thread watches
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL)
    os.kill(os.getpid(), signal.SIGKILL)


def _in_forkserver() -> bool:
    """Whether this import is the forkserver's preloading (its ``main`` is on the stack), not a normal one."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is multiprocessing.forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


# The forkserver imports this module first among its preloads (process._forkserver): that is when it starts
# watching the parent. Anywhere else importing it does nothing.
if _in_forkserver():
    die_with_parent()
