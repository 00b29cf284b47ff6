"""OpenVINO boilerplate shared by the CPU model runners: a dynamic batch, a throughput runner."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import openvino as ov


def read_dynamic_batch(
    core: ov.Core,
    xml_path: Path,
    input_hw: tuple[int, int] | None = None,
    extra_outputs: Sequence[str] = (),
    pool: int = 1,
) -> tuple[ov.Model, tuple[int, int]]:
    """An image IR reshaped to a dynamic batch ([-1, 3, h, w]) and its input (h, w).

    input_hw: None keeps the IR's own input size; extra_outputs: friendly names of inner nodes
    to add as outputs (before the reshape); pool > 1: those outputs (feature maps) are average
    pooled pool x pool inside the graph, which is cheaper than pooling their copies in numpy.
    """
    model = core.read_model(str(xml_path))
    for name in extra_outputs:
        node = next(op for op in model.get_ops() if op.get_friendly_name() == name)
        out = node.output(0)
        if pool > 1:
            k = [pool, pool]
            out = ov.opset13.avg_pool(out, k, [0, 0], [0, 0], k, exclude_pad=True).output(0)
        model.add_outputs([out])
    if input_hw is None:
        input_hw = ir_input_hw(model)
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, 3, *input_hw])})
    return model, input_hw


def ir_input_hw(model: ov.Model) -> tuple[int, int]:
    """(height, width) of an NCHW IR network's first input."""
    shape = model.inputs[0].get_partial_shape()
    return int(shape[2].get_length()), int(shape[3].get_length())


class CpuRunner:
    """A model compiled for CPU throughput, run on a batch at once: the batch is cut into one
    part per CPU stream and the parts run in parallel, their outputs joined in order.

    OpenVINO's THROUGHPUT hint gives each stream its own cores (2 streams of 1 thread on 2
    cores). A batch smaller than the stream count (a query crop) runs instead as one LATENCY
    request on all the threads. Measured here against one LATENCY request for every batch, in
    paired rounds (``bench/openvino_streams.py``, two runs): the OMZ 0277 embedder at batch 32
    gains +4 to +9 % crops/s, bf16 or INT8; a query crop takes the same 10.4 ms (on one stream,
    before this LATENCY request: 14.7 ms against 10.0 ms).

    Example:
        >>> run = CpuRunner(ov.Core(), model, threads=2)            # doctest: +SKIP
        >>> (emb,) = run([batch])    # batch (B, 3, H, W) -> emb (B, D)  # doctest: +SKIP
    """

    def __init__(self, core: ov.Core, model: ov.Model, threads: int = 0, **hints: object) -> None:
        config: dict[str, object] = {"PERFORMANCE_HINT": "THROUGHPUT", **hints}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.outputs = list(self.compiled.outputs)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        # fewer items than streams (a query crop) would leave cores idle: one LATENCY request on
        # all the threads instead (figures in the class docstring).
        # Compiled now, not at the first query: ~0.5 s more to build the runner, none on a
        # service's first search (a live search test missed its window when it was lazy).
        self._small: ov.InferRequest | None = None
        if self.streams > 1:
            latency = {k: v for k, v in config.items() if k != "NUM_STREAMS"}
            latency["PERFORMANCE_HINT"] = "LATENCY"
            self._small = core.compile_model(model, "CPU", latency).create_infer_request()
        self._lock = threading.Lock()  # one batch at a time: the requests are shared

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs (in ``self.outputs`` order) for ``inputs``, batch-first arrays
        of one length, one per model input. A failed inference raises here; the runner stays
        usable."""
        n = len(inputs[0])
        if n == 0:
            raise ValueError("CpuRunner: an empty batch (callers return early for no crops)")
        if any(len(x) != n for x in inputs):
            raise ValueError(
                f"CpuRunner: inputs of different batch sizes {[len(x) for x in inputs]}"
            )
        if n < self.streams and self._small is not None:
            with self._lock:
                self._small.infer(dict(enumerate(inputs)))
                return [np.array(t.data) for t in self._small.output_tensors]  # copies
        bounds = np.linspace(0, n, self.streams + 1).round().astype(int)
        with self._lock:
            started: list[ov.InferRequest] = []
            errors: list[Exception] = []
            for request, (start, end) in zip(self._requests, pairwise(bounds), strict=True):
                try:
                    request.start_async({k: x[start:end] for k, x in enumerate(inputs)})
                except Exception as err:  # a wrong input: wait for the started ones, then raise
                    errors.append(err)
                    break
                started.append(request)
            parts = []
            for request in started:  # every started request is waited for, even after a failure
                try:
                    request.wait()
                except Exception as err:
                    errors.append(err)
                    continue
                parts.append([np.array(t.data) for t in request.output_tensors])  # copies
            if errors:
                raise errors[0]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(self.outputs))]
