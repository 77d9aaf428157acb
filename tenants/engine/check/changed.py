"""Which revisions a branch brings: the revision files added or changed since it left its base branch.

``git diff --name-only <merge-base of BASE and HEAD>`` against the working tree (so uncommitted edits count), plus
the untracked files of the versions folders. Without git, outside a repository, or with a base git does not
know (a shallow clone, no ``origin``), there is no answer: the caller checks every revision and says why.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["changed_files", "repository_root"]


def _git(folder: Path, *args: str) -> str | None:
    try:
        run = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout if run.returncode == 0 else None


def repository_root(folder: Path) -> Path | None:
    """The root of the git work tree holding ``folder``; None without git or outside a repository."""
    top = _git(folder, "rev-parse", "--show-toplevel")
    return Path(top.strip()).resolve() if top and top.strip() else None


def changed_files(folders: list[Path], base: str) -> tuple[set[Path] | None, str]:
    """(the files under ``folders`` added or changed since ``base``, resolved; or None) and a line saying how
    they were found, or why not."""
    if not folders:
        return None, "no versions folder"
    root = repository_root(folders[0])
    if root is None:
        return None, "git is not available here (or this is not a git repository)"
    if _git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}") is None:
        return None, f"git does not know the base {base!r} (fetch it, or pass --base REF)"
    merge_base = (_git(root, "merge-base", base, "HEAD") or "").strip() or base
    paths = [str(f) for f in folders]
    diffed = _git(root, "diff", "--name-only", "-z", "--diff-filter=ACMR", merge_base, "--", *paths)
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", *paths)
    if diffed is None or untracked is None:
        return None, f"git could not compare with {base!r}"
    names = [n for n in (diffed + untracked).split("\0") if n]
    # diff names are relative to the root; ls-files names to the folder git ran in (the root too, here)
    return {(root / n).resolve() for n in names}, f"revision files added or changed since {base}"
