"""Where camera actors run: on the alive Ray node that runs the fewest cameras.

Each camera actor is pinned to its node (hard node affinity): Ray restarts a crashed camera
there. When the node itself is lost, the actor cannot be restarted anywhere and dies; the
supervisor's ``check`` then replaces it, and the replacement is placed on a node that is alive.

Pool actors (detectors, embedders) and index writers go round the alive nodes that can hold
them in turn (``spread``: the i-th of a kind on the (i mod n)-th such node), with soft affinity: when their node
is lost Ray restarts them on another (a writer's shard is on storage every node sees, as the Helm
chart mounts it). Ray honours a soft node preference only for an actor that asks for some
resource (zero-CPU actors went wherever Ray liked, and so did its SPREAD strategy), so such actors
ask for at least ``MIN_PLACED_CPUS``.

Example:
    >>> placement = CameraPlacement()                                       # doctest: +SKIP
    >>> CameraActor.options(scheduling_strategy=placement.place("gate", {"door"}))  # doctest: +SKIP
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

MIN_PLACED_CPUS = 0.01
"""The least CPU a spread actor asks for: enough for Ray to honour its node, 100 of them a core."""


class CameraPlacement:
    """Remembers the node each camera was placed on, to balance the next placement."""

    def __init__(self) -> None:
        self._placed: dict[str, str] = {}  # camera -> node id

    def place(self, name: str, running: set[str]) -> NodeAffinitySchedulingStrategy | str:
        """The strategy for camera ``name``, given the cameras ``running`` now: the alive node
        with the fewest of them ("DEFAULT", Ray's own choice, when no node is seen alive)."""
        alive = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        if not alive:  # the cluster's view catching up
            self._placed.pop(name, None)
            return "DEFAULT"
        load = dict.fromkeys(alive, 0)
        for other, node in self._placed.items():
            if other != name and other in running and node in load:
                load[node] += 1
        node = min(alive, key=lambda n: (load[n], alive.index(n)))
        self._placed[name] = node
        return NodeAffinitySchedulingStrategy(node_id=node, soft=False)


def spread(index: int, num_cpus: float = 0.0, num_gpus: float = 0.0
           ) -> NodeAffinitySchedulingStrategy | str:
    """The strategy for the ``index``-th actor of a pool: the alive nodes that have the CPUs and
    GPUs it asks for, in turn, soft (Ray moves it when its node is lost); "DEFAULT" when no
    such node is seen (a KubeRay head with no CPUs is skipped, GPU actors go to GPU nodes)."""
    fit = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive")
                 and n.get("Resources", {}).get("CPU", 0.0) >= num_cpus
                 and n.get("Resources", {}).get("GPU", 0.0) >= num_gpus)
    if not fit:
        return "DEFAULT"
    return NodeAffinitySchedulingStrategy(node_id=fit[index % len(fit)], soft=True)
