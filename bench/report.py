"""One way for every benchmark to hand back its result: print the JSON, write it to
``<out>/<name>-<date>[<suffix>].json`` (``bench/results/``, see its README)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path


def write_result(out: Path, name: str, result: dict, suffix: str = "", indent: int = 2) -> Path:
    """Print ``result`` as JSON and write it under ``out``; returns the file written."""
    text = json.dumps(result, indent=indent)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    date = result.get("date") or datetime.date.today().isoformat()
    path = out / f"{name}-{date}{suffix}.json"
    path.write_text(text + "\n")
    return path
