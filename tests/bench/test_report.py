"""bench/report.write_result: one file per run, never overwriting an earlier one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from report import write_result  # bench/report.py


def test_runs_of_one_day_get_their_own_files(tmp_path: Path, capsys) -> None:
    paths = [write_result(tmp_path, "bench", {"date": "2026-01-01", "run": k}) for k in range(3)]
    assert [p.name for p in paths] == [
        "bench-2026-01-01.json",
        "bench-2026-01-01-run2.json",
        "bench-2026-01-01-run3.json",
    ]
    assert [json.loads(p.read_text())["run"] for p in paths] == [0, 1, 2]
    assert '"run": 2' in capsys.readouterr().out  # each result is printed too


def test_results_record_the_commit_they_measured(tmp_path: Path) -> None:
    import re
    import subprocess

    from report import code_version

    def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd)

    try:
        head = git("rev-parse", "--short", "HEAD", cwd=Path(__file__).parent)
    except OSError:
        pytest.skip("git is not installed")
    if head.returncode != 0:
        pytest.skip(f"the tests do not run from a git checkout git can read: {head.stderr}")
    path = write_result(tmp_path, "bench", {"date": "2026-01-01"})
    commit = json.loads(path.read_text())["commit"]
    assert re.fullmatch(rf"{head.stdout.strip()}(\+dirty)?", commit), commit
    if git("rev-parse", cwd=tmp_path).returncode != 0:  # tmp_path outside any work tree
        assert code_version(tmp_path) is None
    kept = write_result(tmp_path, "bench", {"date": "2026-01-01", "commit": "abc"})
    assert json.loads(kept.read_text())["commit"] == "abc"  # a caller's own value stays
