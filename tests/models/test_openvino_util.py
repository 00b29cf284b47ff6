"""CpuRunner: a batch cut over CPU streams gives what one request on the whole batch gives."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from models.openvino_util import CpuRunner, read_dynamic_batch

REID = "person-reidentification-retail-0277"


@pytest.fixture(scope="module")
def reid_model(model_store) -> ov.Model:
    model, _ = read_dynamic_batch(ov.Core(), model_store.resolve(REID).path)
    return model


def one_request(model: ov.Model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs of one synchronous request on the whole batch, both cores (the reference)."""
    compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    out = compiled.create_infer_request().infer(dict(enumerate(inputs)))
    return [np.asarray(out[o]) for o in compiled.outputs]


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_streams_keep_the_order_and_the_values(reid_model: ov.Model, n: int) -> None:
    rng = np.random.default_rng(n)
    batch = rng.uniform(0, 255, (n, 3, 256, 128)).astype(np.float32)
    run = CpuRunner(ov.Core(), reid_model, threads=2)
    assert run.streams == 2  # two cores: the THROUGHPUT hint makes two one-thread streams
    (got,) = run([batch])
    (want,) = one_request(reid_model, [batch])
    assert got.shape == want.shape == (n, 256)
    # the same rows in the same order: each crop's vector is nearest its own reference
    cos = (got / np.linalg.norm(got, axis=1, keepdims=True)) @ (
        want / np.linalg.norm(want, axis=1, keepdims=True)
    ).T
    assert (cos.argmax(axis=1) == np.arange(n)).all()
    assert np.diag(cos).min() > 0.999  # bf16 on either path: not bit-equal


def test_several_inputs_are_cut_alike() -> None:
    """Two inputs (as the IRM gallery head has): row i of the output uses row i of both."""
    a = ov.opset13.parameter([-1, 4], ov.Type.f32)
    b = ov.opset13.parameter([-1, 4], ov.Type.f32)
    model = ov.Model([ov.opset13.multiply(a, b)], [a, b])
    run = CpuRunner(ov.Core(), model, threads=2, INFERENCE_PRECISION_HINT="f32")
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    y = np.arange(20, 40, dtype=np.float32).reshape(5, 4)
    (out,) = run([x, y])
    np.testing.assert_array_equal(out, x * y)


def test_an_empty_batch_is_refused(reid_model: ov.Model) -> None:
    run = CpuRunner(ov.Core(), reid_model, threads=1)
    with pytest.raises(ValueError, match="empty batch"):
        run([np.zeros((0, 3, 256, 128), np.float32)])
