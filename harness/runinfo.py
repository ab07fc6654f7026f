"""When, where and on which code a measurement ran: the fields every JSON file of `make bench`,
`make profile`, `make demo` and `make faults` starts with, kept in the copies `make publish` commits
to docs/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """git's output in the repository, or None (no git, not a checkout). Takes no lock: other
    processes may be using the same work tree."""
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def write_run(out_dir: Path, stem: str, result: dict[str, Any], markdown: str) -> str:
    """``<stem>.json`` and ``<stem>.md`` of a run in ``out_dir``; prints the Markdown and returns the line
    that names what was written (the caller says it its own way)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}.md").write_text(markdown)
    print(markdown)
    where = out_dir.relative_to(REPO_ROOT) if out_dir.is_relative_to(REPO_ROOT) else out_dir
    return f"wrote {where}/{stem}.json, {stem}.md"


def run_info() -> dict[str, Any]:
    """``date``, ``commit`` (HEAD's short hash, None outside a git checkout), ``uncommitted_changes``
    (tracked files differ from HEAD: the code measured may not be the commit's) and ``machine``."""
    commit = _git("rev-parse", "--short", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "uncommitted_changes": None if status is None else bool(status),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
    }


def plain_args(a: argparse.Namespace) -> dict[str, Any]:
    """A command's parsed arguments as JSON values: a path inside the repository relative to it."""
    out: dict[str, Any] = {}
    for k, v in vars(a).items():
        if isinstance(v, Path):
            v = str(v.relative_to(REPO_ROOT)) if v.is_absolute() and v.is_relative_to(REPO_ROOT) else str(v)
        out[k] = v
    return out
