"""``tool@ref``: a detached git worktree of each ref, for the run's length.

An A/B of a hot-path change wants old and new alternating round by round in one run, on
the same server and the same noisy machine (a ratio measured side by side is what holds
here; absolute figures move between days). ``--tools roombench-lean,roombench-lean@HEAD~1``
runs the second from a checkout of ``HEAD~1``. The worktrees live in a temporary
directory and are removed when the run ends, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.generators.tools import CHECKOUTS, REPO

__all__ = ["checkouts"]


def _git(*args: str) -> None:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120)
    if done.returncode:
        print(f"run.py: error: git {' '.join(args)}: {done.stderr.strip()}", file=sys.stderr)
        raise SystemExit(2)


@contextlib.contextmanager
def checkouts(refs: list[str]) -> Iterator[dict[str, str]]:
    """Fill :data:`~bench.generators.tools.CHECKOUTS` (ref -> worktree) for the block;
    yields ref -> commit. A ref git does not know ends the run with one line, exit 2."""
    if not refs:
        yield {}
        return
    commits = {}
    for ref in refs:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode:
            print(f"run.py: error: {ref!r} is not a commit of {REPO}", file=sys.stderr)
            raise SystemExit(2)
        commits[ref] = done.stdout.strip()
    with tempfile.TemporaryDirectory(prefix="genbench-checkouts-") as tmp:
        added: list[Path] = []
        try:
            for i, (ref, commit) in enumerate(commits.items()):
                path = Path(tmp) / f"ref{i}"
                _git("worktree", "add", "--detach", "--quiet", str(path), commit)
                added.append(path)
                CHECKOUTS[ref] = path
            yield commits
        finally:
            for path in added:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                               capture_output=True, timeout=120)
            for ref in commits:
                CHECKOUTS.pop(ref, None)
