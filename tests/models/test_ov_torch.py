"""refind.models.ov_torch: OpenVINO IR graphs run with torch give OpenVINO's results."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from refind.models.ov_torch import (
    OvGraph,
    OvNode,
    OvTorchError,
    OvTorchModule,
    export,
    from_openvino,
    load_exported,
    read_ir,
)
from tests.conftest import PETS_GT, PETS_GT_SCALE, PETS_VIDEO, need_pets

ov = pytest.importorskip("openvino")
o8 = pytest.importorskip("openvino.opset8")

REID = "person-reidentification-retail-0277"
ATTRS = "person-attributes-recognition-crossroad-0230"


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pets_crops() -> list[np.ndarray]:
    """Eight real person crops from the first annotated frames of PETS09-S2L1."""
    import av

    from refind.datasets.pets_reid import read_mot_gt, scaled_xyxy

    need_pets()
    rows = read_mot_gt(PETS_GT)
    rows = rows[(rows[:, 6] != 0) & (rows[:, 0] <= 20) & (rows[:, 5] * PETS_GT_SCALE >= 48)]
    boxes = scaled_xyxy(rows, PETS_GT_SCALE).round().astype(int)
    crops = []
    with av.open(str(PETS_VIDEO)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            image = frame.to_ndarray(format="bgr24")
            for x1, y1, x2, y2 in boxes[rows[:, 0] == index + 1]:
                crops.append(image[max(y1, 0) : y2, max(x1, 0) : x2].copy())
            if len(crops) >= 8 or index >= 20:
                break
    assert len(crops) >= 5
    return crops[:8]


def xml_of(model_store, name: str):
    return model_store.resolve(name).path


def batch(crops: list[np.ndarray], n: int, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = hw
    return np.stack([cv2.resize(c, (w, h)).transpose(2, 0, 1) for c in crops[:n]]).astype(np.float32)


def openvino_outputs(xml, x: np.ndarray, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """OpenVINO CPU results in float32 (the CPU default here would be bf16), dynamic batch."""
    core = ov.Core()
    model = xml if isinstance(xml, ov.Model) else core.read_model(str(xml))
    if extra:
        model.add_outputs([op.output(0) for op in model.get_ops() if op.get_friendly_name() in extra])
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, *x.shape[1:]])})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    res = compiled(x)
    out = {}
    for o in compiled.outputs:
        node = o.get_node().input_value(0).get_node().get_friendly_name()
        out[node] = np.asarray(res[o])
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def reid_net(model_store) -> OvTorchModule:
    return from_openvino(xml_of(model_store, REID), outputs=("1126", "reid_embedding"))


@pytest.mark.parametrize("n", [1, 5])
def test_reid_0277_matches_openvino(model_store, reid_net, pets_crops, n):
    x = batch(pets_crops, n, (256, 128))
    ref = openvino_outputs(xml_of(model_store, REID), x, extra=("1126",))
    with torch.no_grad():
        out = reid_net(torch.from_numpy(x))
    emb = out["reid_embedding"].numpy()
    assert emb.shape == (n, 256)
    assert cosine(emb, ref["reid_embedding"]).min() > 0.999
    assert np.abs(emb - ref["reid_embedding"]).max() < 1e-3
    assert out["1126"].shape == (n, 512, 16, 8)
    assert np.abs(out["1126"].numpy() - ref["1126"]).max() < 1e-3 * max(1.0, ref["1126"].max())


@pytest.mark.parametrize("name", [
    "person-reidentification-retail-0286",
    "person-reidentification-retail-0287",
    "person-reidentification-retail-0288",
])
def test_other_reid_models_match_openvino(model_store, pets_crops, name):
    x = batch(pets_crops, 3, (256, 128))
    ref = openvino_outputs(xml_of(model_store, name), x)["reid_embedding"]
    with torch.no_grad():
        emb = from_openvino(xml_of(model_store, name))(torch.from_numpy(x))["reid_embedding"].numpy()
    assert cosine(emb, ref).min() > 0.999


@pytest.mark.parametrize("n", [1, 5])
def test_attributes_0230_matches_openvino(model_store, pets_crops, n):
    xml = xml_of(model_store, ATTRS)
    x = batch(pets_crops, n, (160, 80))
    ref = openvino_outputs(xml, x)
    with torch.no_grad():
        out = from_openvino(xml)(torch.from_numpy(x))
    assert set(out) == {"453", "456", "459"}  # attributes, top point, bottom point
    for name, value in out.items():
        assert value.shape == (n, *ref[name].shape[1:])
        np.testing.assert_allclose(value.numpy(), ref[name], atol=1e-3)


def test_export_reload_needs_no_openvino(model_store, reid_net, pets_crops, tmp_path, monkeypatch):
    folder = export(xml_of(model_store, REID), tmp_path / "0277")
    assert (folder / "weights.safetensors").stat().st_size < 5_000_000  # FP16 weights kept FP16
    monkeypatch.setitem(sys.modules, "openvino", None)  # any openvino import now fails
    net = load_exported(folder, outputs=("1126", "reid_embedding"))
    x = torch.from_numpy(batch(pets_crops, 5, (256, 128)))
    with torch.no_grad():
        a, b = net(x), reid_net(x)
    for name in ("1126", "reid_embedding"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_load_exported_names_missing_files(tmp_path):
    with pytest.raises(OvTorchError, match=r"graph\.json not found"):
        load_exported(tmp_path)


def test_fp16_on_cpu_is_close(reid_net, pets_crops):
    x = torch.from_numpy(batch(pets_crops, 5, (256, 128)))
    half = clone(reid_net).half()
    try:
        with torch.no_grad():
            h = half(x.half())["reid_embedding"].float().numpy()
    except (RuntimeError, OvTorchError) as err:
        pytest.skip(f"torch {torch.__version__} lacks a float16 CPU kernel used here: {err}")
    with torch.no_grad():
        f = reid_net(x)["reid_embedding"].numpy()
    assert cosine(h, f).min() > 0.99


def clone(net: OvTorchModule) -> OvTorchModule:
    return copy.deepcopy(net)


@pytest.mark.gpu
def test_cuda_matches_cpu(reid_net, pets_crops):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.from_numpy(batch(pets_crops, 5, (256, 128)))
    gpu = clone(reid_net).cuda()
    with torch.no_grad():
        f = reid_net(x)["reid_embedding"].numpy()
        g = gpu(x.cuda())["reid_embedding"].cpu().numpy()
        h = gpu.half()(x.cuda().half())["reid_embedding"].float().cpu().numpy()
    assert cosine(g, f).min() > 0.999
    assert cosine(h, f).min() > 0.99


# ---- single ops against OpenVINO: attributes (padding modes, rounding, broadcasting) honoured ----


def _p(shape=(2, 4, 7, 9)):
    return o8.parameter(list(shape), np.float32, name="x")


def _w(*shape):
    return o8.constant(np.random.default_rng(1).normal(size=shape).astype(np.float32))


def _i(*values):
    return o8.constant(np.array(values, np.int64))


OP_CASES = {
    "conv same_upper s2": lambda x: o8.convolution(x, _w(3, 4, 3, 3), [2, 2], [0, 0], [0, 0], [1, 1], "same_upper"),
    "conv same_lower s2": lambda x: o8.convolution(x, _w(3, 4, 2, 4), [2, 2], [0, 0], [0, 0], [1, 1], "same_lower"),
    "conv asymmetric pads": lambda x: o8.convolution(x, _w(3, 4, 3, 3), [1, 2], [0, 2], [1, 0], [1, 1]),
    "conv dilated valid": lambda x: o8.convolution(x, _w(3, 4, 3, 3), [1, 1], [0, 0], [0, 0], [2, 2], "valid"),
    "group conv": lambda x: o8.group_convolution(x, _w(2, 3, 2, 3, 3), [1, 1], [1, 1], [1, 1], [1, 1]),
    "maxpool ceil": lambda x: o8.max_pool(x, [2, 2], [1, 1], [0, 0], [0, 0], [3, 3], "ceil").output(0),
    "maxpool pads floor": lambda x: o8.max_pool(x, [2, 2], [1, 1], [1, 1], [1, 1], [3, 3]).output(0),
    "maxpool same_upper": lambda x: o8.max_pool(x, [2, 2], [1, 1], [0, 0], [0, 0], [3, 2], "floor", "same_upper").output(0),
    "avgpool exclude ceil": lambda x: o8.avg_pool(x, [2, 2], [1, 1], [1, 1], [3, 3], True, "ceil"),
    "avgpool include pads": lambda x: o8.avg_pool(x, [2, 2], [1, 0], [1, 1], [3, 3], False),
    "avgpool plain": lambda x: o8.avg_pool(x, [2, 2], [0, 0], [0, 0], [2, 2], True),
    "mvn outside_sqrt": lambda x: o8.mvn(x, _i(1, 2, 3), True, 1e-3, "outside_sqrt"),
    "mvn mean only": lambda x: o8.mvn(x, _i(-1), False, 1e-5, "inside_sqrt"),
    "reduce max": lambda x: o8.reduce_max(x, _i(2, 3), False),
    "reduce mean": lambda x: o8.reduce_mean(x, _i(-1), True),
    "broadcast sub": lambda x: o8.subtract(x, _w(4, 1, 9)),
    "matmul transpose_a": lambda x: o8.matmul(x, _w(2, 4, 7, 5), True, False),
    "gather negative": lambda x: o8.gather(x, _i(-1, 0), _i(1)),
    "gather scalar": lambda x: o8.gather(x, o8.constant(np.int64(2)), _i(3)),
    "prelu per channel": lambda x: o8.prelu(x, _w(4)),
    "concat + shapeof reshape": lambda x: o8.reshape(
        o8.concat([x, x], 1), o8.concat([o8.gather(o8.shape_of(x), _i(0), _i(0)), _i(-1)], 0), False
    ),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_single_op_matches_openvino(case):
    x = _p()
    out = OP_CASES[case](x)
    model = ov.Model([out], [x], case)
    data = np.random.default_rng(0).normal(size=(2, 4, 7, 9)).astype(np.float32)
    ref = next(iter(openvino_outputs(model, data).values()))
    with torch.no_grad():
        got = next(iter(OvTorchModule(read_ir(model))(torch.from_numpy(data)).values())).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_batch_size_changes_with_shape_subgraphs():
    x = _p()
    shape = o8.concat([o8.gather(o8.shape_of(x), _i(0), _i(0)), _i(-1)], 0)
    net = OvTorchModule(read_ir(ov.Model([o8.reshape(x, shape, False)], [x], "flat")))
    for n in (1, 2, 7):
        assert next(iter(net(torch.zeros(n, 4, 7, 9)).values())).shape == (n, 4 * 7 * 9)


# ---- clear errors ----


def _graph(op_type: str) -> OvGraph:
    nodes = (
        OvNode("input", "Parameter", {"shape": [1, 3]}, (), (("input",),)),
        OvNode("weird_node", op_type, {}, ((0, 0),), (("y",),)),
        OvNode("y/sink", "Result", {}, ((1, 0),), ((),)),
    )
    return OvGraph(nodes, {}, "tiny.xml")


def test_unknown_op_names_type_and_node():
    with pytest.raises(OvTorchError, match=r"'Foo'.*weird_node|weird_node.*'Foo'"):
        OvTorchModule(_graph("Foo"))


@pytest.mark.parametrize(
    ("outputs", "x", "message"),
    [
        (("nope",), torch.zeros(1, 3), "unknown output name"),
        (None, torch.zeros(1, 4), "does not fit"),
    ],
)
def test_bad_output_or_input_is_named(outputs, x, message):
    with pytest.raises(OvTorchError, match=message):
        OvTorchModule(_graph("Relu"), outputs)(x)
