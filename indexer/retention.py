"""Retention: delete crops older than each camera's retention period, in every gallery shard.

A camera's period is its ``retention_days``, else ``retention.default_days``; None keeps its
crops forever. Crops with clip-relative times (a clip ingested without ``--start-time``) have
no date: they are kept, counted in ``undated_kept`` and logged, never taken for old. Rows leave SQLite and the FAISS index first (``GalleryStore.remove_before``,
saved at once), then their crop files. Tracks with crops left keep a summary recomputed from
them.

Example:
    >>> enforce_retention(cfg)["crops_removed"]  # doctest: +SKIP
    120
"""

from __future__ import annotations

import logging
import time

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.evidence import EvidenceStore
from refind.indexer.forget import delete_files, model_stores
from refind.indexer.versions import all_version_shards
from refind.streaming.records import CLIP_TIME_NS, CropRecord, SearchFilter

log = logging.getLogger(__name__)

_DAY_NS = 86_400 * 1_000_000_000


def retention_days(cfg: RefindConfig, camera: str) -> float | None:
    """The retention period of a camera in days (None: keep forever)."""
    for c in cfg.cameras:
        if c.name == camera and c.retention_days is not None:
            return c.retention_days
    return cfg.retention.default_days


def enforce_retention(cfg: RefindConfig, now_ns: int | None = None) -> dict[str, object]:
    """Delete every crop older than its camera's retention period; returns what was removed."""
    now = time.time_ns() if now_ns is None else int(now_ns)
    crops = CropStore.from_config(cfg)
    evidence = EvidenceStore.in_data_dir(cfg.data_dir)
    per_camera: dict[str, int] = {}
    undated: dict[str, int] = {}
    files = 0
    for shard in all_version_shards(cfg.data_dir):  # every index version
        removed: list[CropRecord] = []
        for store in model_stores(cfg, shard):
            for camera in store.metadata.cameras():
                days = retention_days(cfg, camera)
                if days is None:
                    continue
                gone = store.remove_before(camera, now - int(days * _DAY_NS))
                per_camera[camera] = per_camera.get(camera, 0) + len(gone)
                removed += gone
                left = len(store.metadata.ids_matching(store.model_id, SearchFilter(
                    cameras=(camera,), end_ts_ns=CLIP_TIME_NS - 1)))
                if left:
                    undated[camera] = undated.get(camera, 0) + left
        files += delete_files(crops, removed, evidence)
    total = sum(per_camera.values())
    if total:
        log.info("retention removed %d vectors (%d crop files) of %s", total, files,
                 sorted(c for c, n in per_camera.items() if n))
    if undated:
        log.warning("retention kept %d crops of %s whose times count from a clip's start (no "
                    "--start-time at ingest): they have no date; forget their tracks to delete "
                    "them", sum(undated.values()), sorted(undated))
    return {"now_ns": now, "crops_removed": total, "files_deleted": files, "cameras": per_camera,
            "undated_kept": undated}
