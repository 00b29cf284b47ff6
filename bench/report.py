"""One way for every benchmark to hand back its result: print the JSON, write it to
``<out>/<name>-<date>[<suffix>].json`` (``bench/results/``, see its README). A run never
overwrites an earlier one of the same day: the second is written as ``...-run2.json``, and so on.
(``search_latency --only`` merges sections into its day's file on purpose and writes it itself.)"""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path


def write_result(out: Path, name: str, result: dict, suffix: str = "", indent: int = 2) -> Path:
    """Print ``result`` as JSON and write it under ``out`` to a new file; returns its path."""
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
