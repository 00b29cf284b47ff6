"""When the supervisor replaces a camera actor: at once when its loop failed or it died for
good; only after ``live.unresponsive_s`` of silence when it merely does not answer (a new actor
still loading on a busy machine, or one Ray is restarting). On a loaded CI machine a 10 s status
timeout once replaced a starting camera every 11 s for minutes, so it never started."""

from __future__ import annotations

import time

import ray

from refind.actors.camera import CameraReport
from refind.actors.supervisor import RETIRE_AT_MOST_S, Supervisor, may_retire
from refind.config import parse_config


def _supervisor(unresponsive_s: float, silent_s: float = 0.0) -> Supervisor:
    """A supervisor whose camera "pets" last answered (or was spawned) ``silent_s`` ago."""
    sup = Supervisor(parse_config({"live": {"unresponsive_s": unresponsive_s}}))
    sup._answered["pets"] = time.monotonic() - silent_s  # as _spawn and _reports note it
    return sup


def _report(error: str | None) -> CameraReport:
    return CameraReport(camera="pets", state="live", message="", frames_in=1, frames_dropped=0,
                        frames_processed=1, reconnects=0, rate_fps=5.0, tracks_started=0,
                        crops_stored=0, events_published=0, freshness=None, freshness_s=[],
                        stage_seconds={}, error=error)


def test_a_silent_camera_keeps_its_grace_then_is_replaced() -> None:
    silent = ray.exceptions.GetTimeoutError("Get timed out: some object(s) not ready.")
    assert _supervisor(unresponsive_s=60, silent_s=10)._why_replace("pets", silent) is None
    why = _supervisor(unresponsive_s=60, silent_s=70)._why_replace("pets", silent)
    assert why is not None and why.startswith("no answer for") and "GetTimeoutError" in why


def test_an_answer_restarts_the_grace() -> None:
    sup = _supervisor(unresponsive_s=60, silent_s=70)
    sup._answered["pets"] = time.monotonic()  # what a report that came back notes
    assert sup._why_replace("pets", ray.exceptions.GetTimeoutError("late")) is None


def test_a_failed_loop_or_a_dead_actor_is_replaced_at_once() -> None:
    sup = _supervisor(unresponsive_s=3600)
    assert sup._why_replace("pets", _report(None)) is None
    why = sup._why_replace("pets", _report("RuntimeError: decoder gone"))
    assert why == "its loop failed: RuntimeError: decoder gone"
    dead = ray.exceptions.ActorDiedError()
    assert sup._why_replace("pets", dead).startswith("ActorDiedError")


def test_an_old_pool_ends_only_once_no_camera_embeds_with_it() -> None:
    """A switch's old embedder pool ends when no camera holds it; a camera that did not say
    which pool it uses keeps it; past RETIRE_AT_MOST_S it ends whatever the cameras say. (A
    camera mid-frame on a loaded machine held its old pool past the 10 s the supervisor gave
    it, and its loop failed when the pool was killed under it.)"""
    old, new = {"a1", "a2"}, {"b1"}
    assert may_retire(old, {"pets": new, "door": new}, overdue_s=0.0)
    assert may_retire(old, {}, overdue_s=0.0)  # no camera at all
    assert not may_retire(old, {"pets": new, "door": {"a2"}}, overdue_s=0.0)
    assert not may_retire(old, None, overdue_s=0.0)
    assert may_retire(old, {"door": old}, overdue_s=RETIRE_AT_MOST_S)
    assert may_retire(old, None, overdue_s=RETIRE_AT_MOST_S)
