"""CpuRunner: a batch cut over CPU streams gives what one request on the whole batch gives."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from refind.models.openvino_util import CpuRunner, read_dynamic_batch

REID = "person-reidentification-retail-0277"
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # both paths in f32: comparable to rounding error


@pytest.fixture(scope="module")
def reid_model(model_store) -> ov.Model:
    model, _ = read_dynamic_batch(ov.Core(), model_store.resolve(REID).path)
    return model


def one_request(model: ov.Model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs of one synchronous request on the whole batch (the reference)."""
    compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **F32})
    out = compiled.create_infer_request().infer(dict(enumerate(inputs)))
    return [np.asarray(out[o]) for o in compiled.outputs]


def crop_like_batch(n: int, seed: int) -> np.ndarray:
    """(n, 3, 256, 128) float32 inputs that differ a lot between rows: smooth colour fields."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:128] / 64.0
    rows = [
        127
        + 120
        * np.sin(yy[None] * rng.uniform(0.5, 3, (3, 1, 1)) + rng.uniform(0, 6, (3, 1, 1)))
        * np.cos(xx[None] * rng.uniform(0.5, 3, (3, 1, 1)))
        for _ in range(n)
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_streams_keep_the_order_and_the_values(reid_model: ov.Model, n: int) -> None:
    batch = crop_like_batch(n, seed=n)
    run = CpuRunner(ov.Core(), reid_model, threads=2, NUM_STREAMS=2, **F32)
    assert run.streams == 2
    (got,) = run([batch])
    (want,) = one_request(reid_model, [batch])
    assert got.shape == want.shape == (n, 256)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if n > 1:  # the rows differ, so a swapped or repeated part would show
        assert np.abs(want[0] - want[-1]).max() > 100 * 1e-4 * np.abs(want).max()


def test_several_inputs_are_cut_alike() -> None:
    """Two inputs (as the IRM gallery head has): row i of the output uses row i of both."""
    a = ov.opset13.parameter([-1, 4], ov.Type.f32)
    b = ov.opset13.parameter([-1, 4], ov.Type.f32)
    model = ov.Model([ov.opset13.multiply(a, b)], [a, b])
    run = CpuRunner(ov.Core(), model, threads=2, NUM_STREAMS=2, **F32)
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    y = np.arange(20, 40, dtype=np.float32).reshape(5, 4)
    (out,) = run([x, y])
    np.testing.assert_array_equal(out, x * y)
    (one,) = run([x[:1], y[:1]])  # one row: the LATENCY request
    np.testing.assert_array_equal(one, x[:1] * y[:1])
    with pytest.raises(ValueError, match="different batch sizes"):
        run([x, y[:3]])


def test_a_bad_batch_raises_and_the_runner_stays_usable(reid_model: ov.Model) -> None:
    run = CpuRunner(ov.Core(), reid_model, threads=2, NUM_STREAMS=2)
    for n in (4, 1):  # the streams, then the LATENCY request of a batch of one
        with pytest.raises(RuntimeError):  # 100x100 is not the network's 256x128 input
            run([np.zeros((n, 3, 100, 100), np.float32)])
        (out,) = run([crop_like_batch(n, seed=0)])
        assert out.shape == (n, 256) and np.isfinite(out).all()


def test_a_batch_of_one_runs_on_all_threads(reid_model: ov.Model) -> None:
    run = CpuRunner(ov.Core(), reid_model, threads=2, NUM_STREAMS=2)
    assert run._small is not None  # compiled with the runner: no first-query compile
    small = run._small.get_compiled_model()
    assert str(small.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert int(small.get_property("INFERENCE_NUM_THREADS")) == 2
    single = CpuRunner(ov.Core(), reid_model, threads=1)
    single([crop_like_batch(1, seed=1)])
    assert single.streams == 1 and single._small is None  # one stream: nothing to add


def test_an_empty_batch_is_refused(reid_model: ov.Model) -> None:
    run = CpuRunner(ov.Core(), reid_model, threads=1)
    with pytest.raises(ValueError, match="empty batch"):
        run([np.zeros((0, 3, 256, 128), np.float32)])


def test_a_part_refused_at_start_waits_for_the_started_ones(model_store) -> None:
    """0277 with a static batch of 2: of 5 rows on 2 streams the first part (2 rows) starts and
    the second (3 rows) is refused at once. The error is raised only after the first part has
    finished, so the next batch finds no request still busy."""
    model = ov.Core().read_model(model_store.resolve(REID).path)
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([2, 3, 256, 128])})
    run = CpuRunner(ov.Core(), model, threads=2, NUM_STREAMS=2, **F32)
    x = crop_like_batch(5, seed=3)
    (want,) = one_request(model, [x[:2]])
    for _ in range(3):
        with pytest.raises(RuntimeError, match="shape"):
            run([x])
        (out,) = run([x[:4]])
        np.testing.assert_allclose(out[:2], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
