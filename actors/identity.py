"""Identity actor: global person ids and watch alerts for the live cameras.

One actor for the deployment (``identities.enabled``) runs ``refind.indexer.identity_service``:
the index writers tell it of every crop they stored and every track that ended (fire and
forget, in the order they wrote them: Ray runs one caller's calls to an actor in order), and it
links tracks into global ids, checks them against the watches and writes what changed to the
durable record (journal, and Kafka when on). Its state is saved under ``data_dir/identities``
every couple of seconds and when it closes, so when Ray restarts it (``max_restarts``) it picks
up from there; a restarted actor may alert once more for a track it had alerted on.

Example:
    >>> ident = IdentityActor.remote(cfg)                                   # doctest: +SKIP
    >>> ray.get(ident.stats.remote())["crops"]                              # doctest: +SKIP
    120
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from refind.config import RefindConfig
from refind.indexer.identity_service import CropNews, IdentityService, referrer_text_scorer
from refind.indexer.record import EventRecord
from refind.streaming.records import TrackSpan

log = logging.getLogger(__name__)


@ray.remote
class IdentityActor:
    def __init__(self, cfg: RefindConfig) -> None:
        self._service = IdentityService(cfg, EventRecord.open(cfg),
                                        lambda: referrer_text_scorer(cfg))

    def crops(self, news: list[CropNews]) -> int:
        """Crops stored by a writer; returns the alerts raised."""
        return len(self._service.crops(news))

    def ended(self, spans: list[TrackSpan]) -> int:
        return len(self._service.ended(spans))

    def global_ids(self, keys: list[tuple[str, int]], model_id: str) -> dict[tuple[str, int], int]:
        return self._service.global_ids(keys, model_id)

    def stats(self) -> dict[str, Any]:
        return self._service.stats() | {"pid": os.getpid()}

    def close(self) -> dict[str, Any]:
        """Save the state and flush the record's Kafka events; the final stats."""
        self._service.close()
        if self._service.record is not None:
            self._service.record.close()
        return self._service.stats()
