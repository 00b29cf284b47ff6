"""Bad cameras in a live `refind serve` loop: a stream with corrupt packets, one cut off
mid-packet at every loop, one whose clock (its presentation times) jumps an hour ahead and back,
and a camera that flaps (goes down and up every few seconds). Each is a real ffmpeg serving
PETS09-S2L1 over HTTP MPEG-TS: the corrupt and clock-jumping ones through ffmpeg's relay
(``-c copy``, so damaged payloads reach refind's decoder), the truncated one from a plain file
server (each connection ends mid-packet). refind must keep every other camera and every crop it accepted, and
take the camera back when it behaves."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest

from refind.actors.supervisor import wait_until
from refind.streaming.config import CameraConfig
from tests.actors.test_live_ingest import _config
from tests.cameras import FFMPEG, HttpTsCamera, need_ffmpeg
from tests.conftest import PETS_VIDEO, STARTS_RAY, need_models, need_pets, serve_directory
from tests.faults.conftest import LiveRun

pytestmark = [pytest.mark.slow, STARTS_RAY]

FRAMES = 150  # of PETS09-S2L1 per prepared stream (15 s at 10 fps)
WATCH_S = 8  # each damaged stream is watched this long once it gave crops


class RelayCamera(HttpTsCamera):
    """An HTTP MPEG-TS camera that sends a prepared .ts file's bytes as they are, looped."""

    def command(self) -> list[str]:
        return [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
                "-stream_loop", "-1", "-i", str(self.video), "-c", "copy", "-f", "mpegts",
                "-listen", "1", self.url]


def _encode(out: Path, first: int, n: int, offset_s: float = 0.0) -> Path:
    """Frames [first, first + n) of PETS09-S2L1 as H.264 MPEG-TS, times shifted by
    ``offset_s``."""
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-i", str(PETS_VIDEO), "-vf",
                    f"select=between(n\\,{first}\\,{first + n - 1})", "-vsync", "0", "-an",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p",
                    "-output_ts_offset", str(offset_s), "-f", "mpegts", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_ffmpeg()
    need_models()
    need_pets()
    tmp = tmp_path_factory.mktemp("streams")
    clean = _encode(tmp / "clean.ts", 0, FRAMES)
    data = bytearray(clean.read_bytes())
    rng = np.random.default_rng(7)
    bad = bytearray(data)
    for at in rng.integers(0, len(bad) - 1000, size=len(bad) // 20000):  # ~1 in 100 packets
        bad[at:at + 188] = rng.integers(0, 256, 188, dtype=np.uint8).tobytes()
    corrupt = tmp / "corrupt.ts"
    corrupt.write_bytes(bytes(bad))
    cut = tmp / "truncated.ts"
    cut.write_bytes(bytes(data[: len(data) * 2 // 3 + 97]))  # ends inside a packet
    jump = tmp / "clock-jump.ts"  # an hour ahead after 5 s, then back to the start's clock
    jump.write_bytes(_encode(tmp / "a.ts", 0, 50).read_bytes()
                     + _encode(tmp / "b.ts", 50, 50, 3600.0).read_bytes()
                     + _encode(tmp / "c.ts", 100, 50, 10.0).read_bytes())
    return {"corrupt": corrupt, "truncated": cut, "clock-jump": jump}


def _frame_times(cfg, camera: str) -> list[tuple[int, int, int]]:
    """(track, frame, time) of the stored crops of ``camera`` (from the durable record)."""
    from refind.indexer.journal import EventJournal, journal_dir

    return [(e.track_id, e.frame_index, e.ts_ns)
            for e in EventJournal(journal_dir(cfg.data_dir)).read("crops") if e.camera == camera]


def test_bad_streams_and_a_flapping_camera(ray_local, http_camera_factory, streams, tmp_path,
                                           fault_table) -> None:
    steady = http_camera_factory(PETS_VIDEO)
    cfg = _config(tmp_path, {"steady": steady.url}, None, None)
    cams: list[HttpTsCamera] = []
    run = LiveRun(cfg)
    try:
        sup = run.sup
        run.wait_for_crops(3)

        def report(name: str):
            r = sup.status(timeout_s=5).get(name)
            return None if isinstance(r, str) else r

        def steady_crops() -> int:
            return sum(1 for k in run.recorded() if k[0] == "steady")

        steady_at_start = steady_crops()
        watched: dict[str, object] = {}
        with serve_directory(streams["truncated"].parent) as files:
            for name, path in streams.items():
                if name == "truncated":  # a plain file server: the connection ends mid-packet
                    url = f"{files}/{path.name}"
                else:  # ffmpeg relaying the damaged bytes, paced as a camera
                    cam = RelayCamera(path)
                    cam.start()
                    cams.append(cam)
                    url = cam.url
                n_cam = sum(1 for k in run.recorded() if k[0] == name)

                def stored_from(name=name, n_cam=n_cam) -> bool:
                    r = report(name)
                    return (r is not None and r.error is None
                            and sum(1 for k in run.recorded() if k[0] == name) >= n_cam + 3)

                run.inject(f"{name} stream (a camera added live)", lambda name=name, url=url:
                           sup.add_camera(CameraConfig(name=name, url=url, sample_fps=5)),
                           stored_from, timeout_s=90)
                time.sleep(WATCH_S)  # most of a loop of the stream (15 s)
                r = report(name)
                watched[name] = r
                run.faults[-1].seen += (
                    f"; after {WATCH_S} s more: state {r.state}, {r.reconnects} reconnects, "
                    f"{r.corrupt_frames} frames decoded with damage concealed, "
                    f"{r.corrupt_packets} packets refused, error {r.error}")
                sup.remove_camera(name)
        for cam in cams:
            cam.kill()
        # a camera that flaps: down and up every 2 s, five times
        flap = http_camera_factory(PETS_VIDEO)
        sup.add_camera(CameraConfig(name="flappy", url=flap.url, sample_fps=5))
        run.wait_for_crops(3)

        def flapping() -> None:
            for _ in range(5):
                flap.kill()
                time.sleep(2)
                flap.start()
                time.sleep(2)

        n = sum(1 for k in run.recorded() if k[0] == "flappy")
        flapped = run.inject("a camera flapping (down 2 s, up 2 s, five times)", flapping,
                             lambda: sum(1 for k in run.recorded() if k[0] == "flappy") > n + 3
                             and report("flappy").state == "live", timeout_s=120)
        r = report("flappy")
        flapped.seen += f"; {r.reconnects} reconnects, error {r.error}"
        # the steady camera went on all along: it stored crops through the faults and has not
        # given up (on a loaded machine its own test camera, one ffmpeg per client, may lag, be
        # dropped and take a while to be reopened: live or reconnecting, never an error)
        assert steady_crops() > steady_at_start + 3, (steady_at_start, steady_crops())
        wait_until(lambda: (r := report("steady")) is not None and r.state == "live", 60)
        steady = report("steady")
        assert steady is not None and steady.error is None, steady
        assert steady.state in ("live", "reconnecting"), steady
    finally:
        run.stop()
        for cam in cams:
            cam.close()
    run.account(fault_table)  # flapping's time counts from its first drop: 20 s of flaps
    # what each damage did: frames decoded with damage (FFmpeg's H.264 decoder conceals bit
    # errors rather than refusing packets), connections ended and reopened
    assert watched["corrupt"].corrupt_frames > 0, watched["corrupt"]
    assert watched["truncated"].reconnects >= 1, watched["truncated"]
    # the jumping clock: stored times keep to the receiving clock (no hour's jump) and each
    # track's crops are in the order they were seen
    times = _frame_times(run.cfg, "clock-jump")
    stamps = [ns for _, _, ns in times]
    assert stamps and max(stamps) - min(stamps) < 120e9, (min(stamps), max(stamps))
    for track in {t for t, _, _ in times}:
        seq = [(f, ns) for t, f, ns in times if t == track]
        assert sorted(seq) == sorted(seq, key=lambda x: x[1]), seq


def test_prepared_streams_are_damaged_as_intended(streams) -> None:
    """The fixtures hold what the test above says: the corrupt stream differs from the clean one
    in about one packet in a hundred, the truncated one ends inside a packet, the clock jumps an
    hour ahead."""
    clean = (streams["corrupt"].parent / "clean.ts").read_bytes()
    bad = streams["corrupt"].read_bytes()
    packets = len(clean) // 188
    hit = sum(clean[i * 188:(i + 1) * 188] != bad[i * 188:(i + 1) * 188] for i in range(packets))
    assert packets / 200 < hit < packets / 25, (hit, packets)
    assert streams["truncated"].stat().st_size % 188 != 0
    with av.open(str(streams["clock-jump"])) as c:
        pts = [float(p.pts * p.time_base) for p in c.demux(video=0) if p.pts is not None]
    assert max(pts) - min(pts) > 3000
