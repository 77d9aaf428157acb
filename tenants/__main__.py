"""The `tenants` command's entry point: the console script (``tenants = "tenants.__main__:main"``) and
``python -m tenants``. Light on purpose: it imports the CLI inside :func:`main`, never at the top.

Why: every worker process of a parallel run imports the main module again, as ``__mp_main__`` (multiprocessing's
rule for a main *script*; a main module named ``*.__main__`` is exempt). The forkserver's ``"__main__"`` preload
was meant to do that once for all workers, but on Python 3.11 it is a no-op (the forkserver looks for a
``main_path`` key its parent never sends). A console script that imported :mod:`tenants.cli` at the top so made
each worker import Typer, rich and the whole CLI before its first tenant: about 0.25 s of CPU per worker, four
times per run on a two-core runner (issue 13). Now a worker re-imports this module only: the standard library.
"""

from __future__ import annotations


def main() -> None:
    from tenants.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
