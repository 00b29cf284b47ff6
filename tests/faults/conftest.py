"""The fault-injection suite's bookkeeping: what was accepted before each fault, what is missing
or doubled afterwards, how long recovery took and what an operator saw, in one table.

A crop is *accepted* once it is in the durable record (``events/crops.jsonl``): the record is
fsync'ed before the gallery commits, and it is what a camera's store call answers after. For
each fault a test notes the crops recorded just before it (``LiveRun.recorded``); when the run
has stopped, every one of them must be in the gallery exactly once (``refind.indexer.verify``).

``fault_table`` collects one row per fault. With ``REFIND_FAULT_TABLE=docs/faults.md`` the
session writes the table into that file between its ``<!-- fault-table -->`` markers, so the
docs show what the suite measured (``pytest -m faults``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refind.config import RefindConfig
from refind.indexer.verify import CropKey, check_gallery, recorded_crops, stored_crops
from refind.indexer.versions import serving_version
from tests.conftest import http_get
from tests.servers import free_port

TABLE_ENV = "REFIND_FAULT_TABLE"
START, END = "<!-- fault-table -->", "<!-- /fault-table -->"


@dataclass
class FaultRow:
    """One fault and what it cost."""

    fault: str
    accepted: int | None  # crops in the durable record when the fault struck (None: no crops)
    lost: int  # of those, not in the gallery once the run stopped
    duplicates: int  # crops stored twice (over the whole run of the fault)
    recovery_s: float | None  # fault to service again (or to a clean exit); None: neither
    seen: str  # what an operator saw: health, states, messages

    def cells(self) -> list[str]:
        rec = "did not recover" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        crops = [str(v) for v in (self.accepted, self.lost, self.duplicates)]
        return [self.fault, *(crops if self.accepted is not None else ["-"] * 3), rec, self.seen]


@dataclass
class FaultTable:
    rows: list[FaultRow] = field(default_factory=list)

    def add(self, row: FaultRow) -> None:
        self.rows.append(row)

    def markdown(self) -> str:
        head = ["fault", "crops accepted before", "lost", "stored twice",
                "recovery or clean exit (s)",
                "what the operator saw"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |"
                  for r in self.rows]
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (f"Measured by `pytest -m faults` on {when}, {os.cpu_count()} cores, "
                f"{platform.machine()}.\n\n" + "\n".join(lines))

    def write(self, path: Path) -> None:
        """Put the table between the markers of ``path`` (appended when it has none)."""
        text = path.read_text() if path.is_file() else ""
        block = f"{START}\n{self.markdown()}\n{END}"
        if START in text and END in text:
            text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text,
                          flags=re.S)
        else:
            text += ("\n" if text else "") + block + "\n"
        path.write_text(text)


_TABLE = FaultTable()


@pytest.fixture(scope="session")
def fault_table() -> Iterator[FaultTable]:
    yield _TABLE
    target = os.environ.get(TABLE_ENV)
    if target and _TABLE.rows:
        _TABLE.write(Path(target))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.faults)


@dataclass
class Injected:
    """A fault as it happened: the crops recorded just before it, how long recovery took and
    what was seen meanwhile."""

    name: str
    before: set[CropKey]
    recovery_s: float | None
    seen: str
    duplicates_before: int = 0


class LiveRun:
    """``refind serve``'s loop (``run_serve``: supervision, saves, HTTP health) in a thread of
    the test, so that faults can be injected into its actors and servers."""

    def __init__(self, cfg: RefindConfig) -> None:
        from refind.app.serve import run_serve

        self.cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(
            update={"host": "127.0.0.1", "port": free_port()})})
        self.stop_event = threading.Event()
        self._ready = threading.Event()
        self.sup = None
        self.error: BaseException | None = None
        self.faults: list[Injected] = []

        def started(sup) -> None:
            self.sup = sup
            self._ready.set()

        def run() -> None:
            try:
                run_serve(self.cfg, self.stop_event, on_start=started)
            except BaseException as err:
                self.error = err
                self._ready.set()

        self._thread = threading.Thread(target=run, name="serve", daemon=True)
        self._thread.start()
        assert self._ready.wait(180), "refind serve did not start in 180 s"
        if self.error is not None:
            raise self.error
        self.model_id = self.sup.live.model_id

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.cfg.serve.port}"

    def alive(self) -> None:
        """Fail at once when the serve loop itself died (it must survive every fault)."""
        if not self._thread.is_alive() and not self.stop_event.is_set():
            raise AssertionError(f"refind serve's loop ended: {self.error!r}")

    def health(self) -> str:
        """'200 ok', '503 degraded ...' or the error a scrape met."""
        self.alive()
        try:
            code, body = http_get(self.base + "/healthz")
        except OSError as err:
            return f"no answer ({type(err).__name__})"
        data = json.loads(body)
        cams = ",".join(sorted({str(v).split(":")[0] for v in data.get("cameras", {}).values()}))
        down = ", ".join(sorted(data.get("actors_down", {})))
        errors = "; ".join(f"{k}: {v}" for k, v in sorted(data.get("store_errors", {}).items()))
        return (f"{code} {data.get('status')} (cameras: {cams}"
                f"{'; down: ' + down if down else ''}{'; store errors: ' + errors if errors else ''})")

    def recorded(self) -> set[CropKey]:
        return set(recorded_crops(Path(self.cfg.data_dir))[0])

    def duplicates(self) -> int:
        stored = stored_crops(serving_version(self.cfg).root, self.model_id)
        return sum(1 for n in stored.values() if n > 1)

    def wait_for_crops(self, more: int, timeout_s: float = 120) -> None:
        """Until ``more`` crops beyond those recorded now are recorded."""
        target = len(self.recorded()) + more
        deadline = time.monotonic() + timeout_s
        while len(self.recorded()) < target:
            self.alive()
            assert time.monotonic() < deadline, (
                f"fewer than {more} new crops in {timeout_s} s; {self.where()}")
            time.sleep(0.5)

    def where(self) -> str:
        """Where the pipeline stands: health, the camera's counters, the faults so far (what a
        failed wait reports, to tell a stalled camera from a stalled writer)."""
        fields = ("state", "message", "frames_in", "frames_processed", "reconnects",
                  "tracks_started", "crops_stored", "crops_failed", "stores_in_flight",
                  "detect_failed", "error")
        cams = {name: r if isinstance(r, str) else {f: getattr(r, f) for f in fields}
                for name, r in self.sup.status(timeout_s=5).items()}
        faults = [(f.name, f.recovery_s, f.seen) for f in self.faults]
        return f"health {self.health()}; cameras {cams}; faults {faults}"

    def inject(self, name: str, fault: Callable[[], None], recovered: Callable[[], bool],
               timeout_s: float = 120) -> Injected:
        """Note what is recorded, strike, then poll health until ``recovered()``."""
        before = self.recorded()
        dups = self.duplicates()
        t0 = time.monotonic()
        fault()
        seen: list[str] = []
        took: float | None = None
        while time.monotonic() - t0 < timeout_s:
            h = self.health()
            if not seen or seen[-1] != h:
                seen.append(h)
            if recovered():
                took = time.monotonic() - t0
                break
            time.sleep(0.3)
        time.sleep(1.2)  # health is cached for a second
        h = self.health()
        if seen[-1] != h:
            seen.append(h)
        done = Injected(name, before, took, "; then ".join(seen), dups)
        self.faults.append(done)
        return done

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=180)
        assert not self._thread.is_alive(), "refind serve did not stop in 180 s"

    def rows(self) -> list[FaultRow]:
        """After ``stop``: each fault's losses against the gallery as it was left."""
        stored = stored_crops(serving_version(self.cfg).root, self.model_id)
        rows = []
        for i, f in enumerate(self.faults):
            dups_after = (self.faults[i + 1].duplicates_before if i + 1 < len(self.faults)
                          else sum(1 for n in stored.values() if n > 1))
            lost = sum(1 for k in f.before if k not in stored)
            rows.append(FaultRow(f.name, len(f.before), lost, dups_after - f.duplicates_before,
                                 f.recovery_s, f.seen))
        return rows

    def account(self, table: FaultTable) -> list[FaultRow]:
        """After ``stop``: each fault's row into ``table``; then every fault recovered, lost
        nothing and stored nothing twice, and the gallery matches its record."""
        rows = self.rows()
        for row in rows:
            table.add(row)
        report = check_gallery(self.cfg)
        assert report.ok, report.summary()
        for row in rows:
            assert row.recovery_s is not None and row.lost == 0 and row.duplicates == 0, row
        return rows
