"""One way for every benchmark to hand back its result: print the JSON, write it to
``<out>/<name>-<date>[<suffix>].json`` (``bench/results/``, see its README). A run never
overwrites an earlier one of the same day: the second is written as ``...-run2.json``, and so on.
Each result written here records the code it measured (``"commit"``: the git commit, ``+dirty``
with uncommitted or untracked changes; null outside a git checkout); ``ingest_fps`` and
``live_streams`` print theirs, and ``search_latency --only`` records it per merged section.
(``search_latency --only`` merges sections into its day's file on purpose and writes it itself.)"""

from __future__ import annotations

import datetime
import itertools
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def code_version(repo: Path = REPO) -> str | None:
    """The checked-out commit (short), with ``+dirty`` when files have changed or new files are
    not ignored; None when ``repo`` is not a git checkout or git is missing."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def write_result(out: Path, name: str, result: dict, suffix: str = "", indent: int = 2) -> Path:
    """Print ``result`` as JSON and write it under ``out`` to a new file; returns its path."""
    result = {**result, "commit": result["commit"] if "commit" in result else code_version()}
    text = json.dumps(result, indent=indent)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    date = result.get("date") or datetime.date.today().isoformat()
    stem = f"{name}-{date}{suffix}"
    path = out / f"{stem}.json"
    for run in itertools.count(2):
        if not path.exists():
            break
        path = out / f"{stem}-run{run}.json"
    path.write_text(text + "\n")
    return path
