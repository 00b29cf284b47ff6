"""Retention: only old crops of cameras with a retention period go; summaries follow."""

from __future__ import annotations

import pytest

from refind.app.cli import main
from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.config import RetentionConfig
from refind.indexer.retention import enforce_retention
from refind.streaming.config import CameraConfig
from tests.indexer.test_forget import N, _build, _cfg, _found, _open

S = 1_000_000_000  # crop_records: crop i at i seconds; cameras gate, lobby, yard, dock
T0 = 1_765_000_000 * S  # the clips' wall-clock start (ingested with --start-time)


@pytest.mark.parametrize(
    ("gate_days", "default_days", "cut_s"),
    [
        (100 / 86_400, None, {"gate": 100}),  # gate keeps its last 100 s, the others forever
        (None, 50 / 86_400, {c: 150 for c in ("gate", "lobby", "yard", "dock")}),
        (None, None, {}),
    ],
)
def test_retention_removes_only_old_crops(tmp_path, gate_days, default_days, cut_s):
    base = _cfg(tmp_path)
    cfg = RefindConfig(
        data_dir=tmp_path, gallery=base.gallery,
        cameras=(CameraConfig(name="gate", url="x.mp4", retention_days=gate_days),),
        retention=RetentionConfig(default_days=default_days),
    )
    vectors, records = _build(cfg, T0)
    result = enforce_retention(cfg, now_ns=T0 + N * S)
    gone = {r.vector_id for r in records if r.ts_ns < T0 + cut_s.get(r.camera, 0) * S}
    assert result["crops_removed"] == len(gone) == result["files_deleted"]
    crops = CropStore.from_config(cfg)
    for r in records:
        assert crops.resolve(r.crop_path).exists() == (r.vector_id not in gone)
    next(tmp_path.glob("gallery/index/*.faiss")).unlink()  # rebuilt from SQLite: still gone
    with _open(cfg, read_only=True) as store:
        assert len(store) == N - len(gone)
        assert not _found(store, vectors) & gone
        if "gate" in cut_s:
            assert store.track("gate", 1) is None  # crops 0..16 s: all gone
            kept = store.track("gate", 6)  # crops 100..116 s: kept whole unless cut at 150 s
            assert (kept is None) == (cut_s["gate"] > 116)
        assert not store.metadata.is_forgotten("gate", 1)  # retention is not forgetting


def test_crops_without_a_date_are_kept_and_counted(tmp_path, caplog):
    """Clips ingested without --start-time: their times count from 0, which is not 1970."""
    cfg = RefindConfig(data_dir=tmp_path, gallery=_cfg(tmp_path).gallery,
                       retention=RetentionConfig(default_days=1.0))
    _, records = _build(cfg)
    result = enforce_retention(cfg, now_ns=T0)
    assert result["crops_removed"] == 0 and sum(result["undated_kept"].values()) == N
    assert "no date" in caplog.text
    crops = CropStore.from_config(cfg)
    assert all(crops.resolve(r.crop_path).exists() for r in records)


def test_cli_retention(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    _build(cfg)
    assert main(["retention", "--data-dir", str(tmp_path), "--json"]) == 0
    assert '"crops_removed": 0' in capsys.readouterr().out
