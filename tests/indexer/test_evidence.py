"""Crop evidence on disk: read once, by ingest or the first query, then reused."""

from __future__ import annotations

import numpy as np
import pytest

from refind.indexer.evidence import EvidenceStore
from refind.models.referring import ComposingReferrer, CropEvidence
from tests.models.test_referring import PEOPLE, _Attributes, _BoxPose


class _Counting:
    """Counts the crops a model is asked to read."""

    def __init__(self, model) -> None:
        self.model, self.seen = model, 0
        self.model_id = model.model_id

    def __call__(self, crops):
        self.seen += len(crops)
        return self.model(crops)


def test_store_round_trip_keeps_the_first_value(tmp_path) -> None:
    store = EvidenceStore.in_data_dir(tmp_path)
    assert store is not None and len(store) == 0
    store.put_many([(b"k1", b"one", "c/1/1.jpg"), (b"k2", b"two", "c/1/2.jpg")])
    store.put_many([(b"k1", b"changed", None)])
    assert store.get_many([b"k1", b"k2", b"k3"]) == {b"k1": b"one", b"k2": b"two"}
    assert len(store) == 2
    store.close()
    again = EvidenceStore.in_data_dir(tmp_path)
    assert again.get_many([b"k2"]) == {b"k2": b"two"}  # it outlives the process's store


def test_an_unwritable_data_dir_keeps_evidence_in_memory(tmp_path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert EvidenceStore.in_data_dir(blocked / "data") is None  # with a warning, not a crash


def test_a_second_referrer_reads_evidence_from_disk_not_from_the_models(tmp_path) -> None:
    def referrer() -> tuple[ComposingReferrer, _Counting, _Counting]:
        attrs, pose = _Counting(_Attributes()), _Counting(_BoxPose())
        store = EvidenceStore.in_data_dir(tmp_path)
        return ComposingReferrer(attrs, pose, store=store), attrs, pose  # type: ignore[arg-type]

    first, attrs, pose = referrer()
    a = first("the person in a red top", PEOPLE)
    assert attrs.seen == pose.seen == len(PEOPLE)
    second, attrs2, pose2 = referrer()
    b = second("the person in a red top", PEOPLE)
    assert attrs2.seen == pose2.seen == 0
    assert np.array_equal(a.selected, b.selected) and np.allclose(a.scores, b.scores, atol=1e-4)
    assert a.reasons == b.reasons


def test_crop_evidence_serialises_exactly_enough() -> None:
    referrer = ComposingReferrer(_Attributes(), _BoxPose())  # type: ignore[arg-type]
    [ev] = referrer.crop_evidence([PEOPLE[0].crop])
    back = CropEvidence.from_bytes(ev.to_bytes())
    assert set(back.colours) == set(ev.colours) and set(back.outlines) == set(ev.outlines)
    assert all(np.allclose(back.colours[k], ev.colours[k], atol=1e-5) for k in ev.colours)
    assert np.allclose(back.attrs, ev.attrs, atol=1e-5)
    assert back.outlines["top"][0] == ev.outlines["top"][0]


def test_deleting_crops_deletes_what_was_read_from_them(tmp_path) -> None:
    from refind.indexer.blobs import CropStore
    from refind.indexer.forget import delete_files
    from tests.indexer.conftest import crop_records

    crops = CropStore(tmp_path / "crops")
    records = crop_records(np.arange(4))
    for r in records:
        (crops.root / r.crop_path).parent.mkdir(parents=True, exist_ok=True)
        (crops.root / r.crop_path).write_bytes(b"jpeg")
    store = EvidenceStore.in_data_dir(tmp_path)
    store.put_many([(bytes([i]), b"ev", r.crop_path) for i, r in enumerate(records)]
                   + [(b"photo", b"ev", None)])
    assert delete_files(crops, records[:2], store) == 2
    assert store.get_many([b"\x00", b"\x01", b"\x02", b"\x03", b"photo"]).keys() == {
        b"\x02", b"\x03", b"photo"}


@pytest.mark.slow
def test_ingest_reads_every_stored_crop_and_forget_deletes_it(tmp_path, pets_video) -> None:
    """The real ingest fills the store (one row per stored crop, named by its path); a first
    text query then reads no model; forgetting a track deletes its rows."""
    import sqlite3

    from refind.app.cli import main

    data = tmp_path / "data"
    assert main(["ingest", str(pets_video), "--camera", "pets", "--max-frames", "150",
                 "--data-dir", str(data), "--json"]) == 0
    with sqlite3.connect(data / "evidence.sqlite3") as conn:
        rows = conn.execute("SELECT crop_path FROM evidence").fetchall()
    stored = sorted(str(p.relative_to(data / "crops")) for p in (data / "crops").rglob("*.jpg")
                    if not p.name.endswith(".ctx.jpg"))  # the frames beside the crops
    assert sorted(r[0] for r in rows) == stored and stored
    track = int(stored[0].split("/")[1])
    assert main(["forget", "--camera", "pets", "--track", str(track), "--data-dir", str(data),
                 "--json"]) == 0
    with sqlite3.connect(data / "evidence.sqlite3") as conn:
        left = [r[0] for r in conn.execute("SELECT crop_path FROM evidence")]
    assert left and not any(p.split("/")[1] == str(track) for p in left)
