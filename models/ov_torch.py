"""Run an OpenVINO IR network in PyTorch: the same graph, op by op, with torch ops.

An IR is read into an ``OvGraph`` (ops in topological order, their attributes, input references
and constants); ``OvTorchModule`` folds every constant-only subgraph once (FP16 weights behind a
Convert become float32 buffers) and executes the rest with torch. Shape subgraphs
(ShapeOf -> Gather -> Concat -> Reshape) run on the actual input, on the CPU, so any batch size
works. ``export`` writes the graph as ``graph.json`` + ``weights.safetensors`` (constants in their
IR precision) so that ``load_exported`` needs only torch and safetensors, e.g. on a GPU machine
without OpenVINO.

Example:
    >>> net = from_openvino(xml, outputs=("1126", "reid_embedding"))   # doctest: +SKIP
    >>> out = net(torch.zeros(4, 3, 256, 128))                        # doctest: +SKIP
    >>> out["1126"].shape, out["reid_embedding"].shape                # doctest: +SKIP
    (torch.Size([4, 512, 16, 8]), torch.Size([4, 256]))
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

FORMAT = "refind-ov-torch"
FORMAT_VERSION = 1
Key = tuple[int, int]  # (node index, output index)


class OvTorchError(ValueError):
    """An IR this converter cannot run, or a bad output name / input; the message names it."""


@dataclass(frozen=True)
class OvNode:
    """One IR op: friendly name, type, attributes, inputs as (producer, output) and tensor names."""

    name: str
    type: str
    attrs: dict[str, Any]
    inputs: tuple[Key, ...]
    tensor_names: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class OvGraph:
    """Ops in topological order; ``constants`` maps a Constant's node index to its value."""

    nodes: tuple[OvNode, ...]
    constants: dict[int, torch.Tensor]
    source: str = ""


# ---- ops: each takes (attrs, *inputs) and returns a tensor or a tuple of output tensors ----

DTYPES = {
    "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
    "i64": torch.int64, "i32": torch.int32, "i8": torch.int8, "u8": torch.uint8,
    "boolean": torch.bool,
}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pads(a: dict, x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial dim, honouring auto_pad on the actual input size."""
    mode = str(a.get("auto_pad", "explicit")).lower()
    if mode in ("explicit", "notset"):
        return list(zip(a["pads_begin"], a["pads_end"], strict=True))
    if mode == "valid":
        return [(0, 0)] * len(kernel)
    if mode not in ("same_upper", "same_lower"):
        raise OvTorchError(f"unknown auto_pad {mode!r}; valid: explicit, valid, same_upper, same_lower")
    pads = []
    for n, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        pads.append((small, total - small) if mode == "same_upper" else (total - small, small))
    return pads


def _flat(pads: Sequence[tuple[int, int]]) -> list[int]:
    """F.pad order: last dimension first."""
    return [p for pair in reversed(pads) for p in pair]


def _conv(a: dict, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
          groups: int = 1) -> torch.Tensor:
    pads = _pads(a, x, w.shape[2:], a["strides"], a["dilations"])
    padding: list[int] | int = [b for b, _ in pads]
    if any(b != e for b, e in pads):
        x, padding = F.pad(x, _flat(pads)), 0
    b = None if bias is None else bias.reshape(-1)  # a following bias Add, fused (see _fuse_bias)
    return _CONV[w.ndim - 2](x, w, b, a["strides"], padding, a["dilations"], groups)


def _group_conv(a: dict, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
    # IR weights (G, O/G, I/G, *k) -> torch (O, I/G, *k) with groups=G
    return _conv(a, x, w.flatten(0, 1), bias, groups=w.shape[0])


def _pool_pads(a: dict, x: torch.Tensor, dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Explicit pads, with the end pad grown so that floor pooling gives the IR's output size."""
    kernel, strides = a["kernel"], a["strides"]
    pads = _pads(a, x, kernel, strides, dilations)
    rounding = str(a.get("rounding_type", "floor")).lower()
    if rounding == "floor":
        return pads
    if rounding not in ("ceil", "ceil_torch"):
        raise OvTorchError(f"unknown rounding_type {rounding!r}; valid: floor, ceil, ceil_torch")
    out = []
    for n, k, s, d, (b, e) in zip(x.shape[2:], kernel, strides, dilations, pads, strict=True):
        k_eff = (k - 1) * d + 1
        size = -(-(n + b + e - k_eff) // s) + 1
        if rounding == "ceil_torch" and (size - 1) * s >= n + b:
            size -= 1  # torch drops a last window that starts in the end padding
        out.append((b, e + max((size - 1) * s + k_eff - (n + b + e), 0)))
    return out


def _max_pool(a: dict, x: torch.Tensor) -> tuple[torch.Tensor]:
    dil = a.get("dilations") or [1] * (x.ndim - 2)
    pads = _pool_pads(a, x, dil)
    pool = _MAXPOOL[x.ndim - 2]
    sym = all(b == e and b <= k // 2 for (b, e), k in zip(pads, a["kernel"], strict=True))
    if sym:
        return (pool(x, a["kernel"], a["strides"], [b for b, _ in pads], dil),)
    x = F.pad(x, _flat(pads), value=float("-inf"))
    return (pool(x, a["kernel"], a["strides"], 0, dil),)  # output 1 (indices) is not produced


def _avg_pool(a: dict, x: torch.Tensor) -> torch.Tensor:
    kernel, strides = a["kernel"], a["strides"]
    explicit = _pads(a, x, kernel, strides, [1] * len(kernel))
    pads = _pool_pads(a, x, [1] * len(kernel))
    pool = _AVGPOOL[x.ndim - 2]
    exclude = bool(a.get("exclude-pad", False))
    if not any(b or e for b, e in pads):
        return pool(x, kernel, strides)
    if pads == explicit and all(b == e and b <= k // 2 for (b, e), k in zip(pads, kernel, strict=True)):
        return pool(x, kernel, strides, [b for b, _ in pads], False, not exclude)
    # general case: sum over the window / count of the positions that count (pads when included)
    mask = F.pad(x.new_ones((1, 1, *x.shape[2:])), _flat(explicit), value=0.0 if exclude else 1.0)
    extra = [(0, e - e0) for (_, e), (_, e0) in zip(pads, explicit, strict=True)]
    mask = F.pad(mask, _flat(extra), value=0.0)
    return pool(F.pad(x, _flat(pads)), kernel, strides) / pool(mask, kernel, strides)


def _mvn(a: dict, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    if axes is None:  # opset 2: across_channels attribute instead of an axes input
        dims = list(range(1 if a.get("across_channels") else 2, x.ndim))
    else:
        dims = [int(d) % x.ndim for d in axes.reshape(-1).tolist()]
    xf = x.float()  # statistics in float32: squares overflow float16
    xf = xf - xf.mean(dims, keepdim=True)
    if a.get("normalize_variance", True):
        var = xf.square().mean(dims, keepdim=True)
        if str(a.get("eps_mode", "inside_sqrt")).lower() == "inside_sqrt":
            xf = xf * torch.rsqrt(var + a["eps"])
        else:
            xf = xf / (var.sqrt() + a["eps"])
    return xf.to(x.dtype)


def _gather(a: dict, data: torch.Tensor, indices: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    if a.get("batch_dims", 0) != 0:
        raise OvTorchError(f"Gather with batch_dims={a['batch_dims']} is not supported (only 0)")
    ax = int(axis) % data.ndim
    idx = indices.to(data.device, torch.long)
    idx = torch.where(idx < 0, idx + data.shape[ax], idx)
    out = data.index_select(ax, idx.reshape(-1))
    return out.reshape(*data.shape[:ax], *idx.shape, *data.shape[ax + 1 :])


def _reshape(a: dict, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    target = [int(s) for s in shape.reshape(-1).tolist()]
    if a.get("special_zero"):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    def op(a: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if str(a.get("auto_broadcast", "numpy")).lower() not in ("numpy", "none"):
            raise OvTorchError(f"auto_broadcast {a['auto_broadcast']!r} is not supported (numpy, none)")
        return fn(x, y)

    return op


def _reduce(fn: Callable[..., torch.Tensor]) -> Callable:
    def op(a: dict, x: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
        dims = [int(d) % max(x.ndim, 1) for d in axes.reshape(-1).tolist()]
        return fn(x, dim=dims, keepdim=bool(a.get("keep_dims", False))) if dims else x

    return op


def _matmul(a: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if a.get("transpose_a") and x.ndim > 1:
        x = x.transpose(-1, -2)
    if a.get("transpose_b") and y.ndim > 1:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _prelu(a: dict, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    if slope.ndim == 1 and slope.numel() > 1 and x.ndim >= 2 and slope.numel() == x.shape[1]:
        slope = slope.reshape(-1, *[1] * (x.ndim - 2))  # a 1-d slope is per channel (axis 1)
    return torch.where(x >= 0, x, x * slope)


def _convert(a: dict, x: torch.Tensor) -> torch.Tensor:
    dtype = DTYPES.get(str(a["destination_type"]))
    if dtype is None:
        raise OvTorchError(f"Convert to {a['destination_type']!r} is not supported: {sorted(DTYPES)}")
    return x.to(dtype)


def _squeeze(a: dict, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(int(d) % x.ndim for d in axes.reshape(-1).tolist()))


def _unsqueeze(a: dict, x: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    n = x.ndim + axes.numel()
    for d in sorted(int(d) % n for d in axes.reshape(-1).tolist()):
        x = x.unsqueeze(d)
    return x


OPS: dict[str, Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]] = {
    "Convert": _convert,
    "Add": _binary(torch.add),
    "Subtract": _binary(torch.sub),
    "Multiply": _binary(torch.mul),
    "Divide": _binary(torch.div),
    "Maximum": _binary(torch.maximum),
    "Minimum": _binary(torch.minimum),
    "Power": _binary(torch.pow),
    "Convolution": _conv,
    "GroupConvolution": _group_conv,
    "MaxPool": _max_pool,
    "AvgPool": _avg_pool,
    "MVN": _mvn,
    "MatMul": _matmul,
    "PRelu": _prelu,
    "Relu": lambda a, x: torch.relu(x),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "Tanh": lambda a, x: torch.tanh(x),
    "Exp": lambda a, x: torch.exp(x),
    "Clamp": lambda a, x: torch.clamp(x, a["min"], a["max"]),
    "Softmax": lambda a, x: torch.softmax(x, dim=a["axis"]),
    "ReduceMean": _reduce(torch.mean),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "ReduceSum": _reduce(torch.sum),
    "ShapeOf": lambda a, x: torch.tensor(x.shape, dtype=DTYPES[str(a.get("output_type", "i64"))]),
    "Gather": _gather,
    "Concat": lambda a, *xs: torch.cat(xs, dim=a["axis"]),
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Identity": lambda a, x: x,
    "Transpose": lambda a, x, order: x.permute([int(d) for d in order.reshape(-1).tolist()]),
}


# ---- the module ----


@dataclass(frozen=True)
class _Step:
    index: int
    node: OvNode
    fn: Callable[..., Any]
    keep: frozenset[int]  # output indices that are consumed later or returned
    free: tuple[Key, ...]  # values last used by this step


class OvTorchModule(nn.Module):
    """An IR graph executed with torch; ``forward(*inputs)`` returns ``{output name: tensor}``.

    Outputs are named by node friendly name (output 0), ``"name:k"`` (output k) or tensor name;
    by default the IR's Result outputs. Float constants are buffers (so ``.to()`` / ``.half()``
    apply); integer constants (shapes, axes, indices) stay on the CPU.

    Example:
        >>> net = load_exported("exported/0277", outputs=("1126",))      # doctest: +SKIP
        >>> net(torch.zeros(2, 3, 256, 128))["1126"].shape               # doctest: +SKIP
        torch.Size([2, 512, 16, 8])
    """

    def __init__(self, graph: OvGraph, outputs: Sequence[str] | None = None) -> None:
        super().__init__()
        nodes = graph.nodes
        unknown = sorted({n.type for n in nodes} - set(OPS) - {"Parameter", "Constant", "Result"})
        if unknown:
            bad = next(n for n in nodes if n.type in unknown)
            raise OvTorchError(
                f"unsupported OpenVINO op type(s) {unknown} (first: node {bad.name!r} of type "
                f"{bad.type!r}) in {graph.source or 'graph'}; supported: {sorted(OPS)}"
            )
        self.source = graph.source
        self._params = [i for i, n in enumerate(nodes) if n.type == "Parameter"]
        self.input_shapes = [tuple(nodes[i].attrs.get("shape", ())) for i in self._params]
        self.outputs = self._resolve_outputs(nodes, outputs)
        needed = self._needed(nodes, set(self.outputs.values()))
        static = self._fold(graph, needed)
        runtime = [i for i in sorted(needed) if nodes[i].type not in ("Parameter", "Result")
                   and (i, 0) not in static]
        nodes = _fuse_bias(nodes, static, runtime, set(self.outputs.values()))
        self._static_keys: dict[Key, str] = {}
        self._ints: dict[Key, torch.Tensor] = {}
        for i in runtime:
            for key in nodes[i].inputs:
                if key in static and key not in self._static_keys and key not in self._ints:
                    if static[key].is_floating_point():
                        self._static_keys[key] = f"c{key[0]}_{key[1]}"
                        self.register_buffer(self._static_keys[key], static[key])
                    else:
                        self._ints[key] = static[key]
        for key in self.outputs.values():  # a requested constant (rare) is returned as is
            if key in static and key not in self._static_keys:
                self._ints.setdefault(key, static[key])
        last_use = {key: s for s, i in enumerate(runtime) for key in nodes[i].inputs}
        returned = set(self.outputs.values())
        self._steps = [
            _Step(
                index=i,
                node=nodes[i],
                fn=OPS[nodes[i].type],
                keep=frozenset(k for (j, k) in {*last_use, *returned} if j == i),
                free=tuple(key for key, s in last_use.items() if s == pos and key not in returned
                           and key not in static),
            )
            for pos, i in enumerate(runtime)
        ]
        log.debug("%s: %d runtime ops, %d constant buffers", self.source, len(self._steps),
                  len(self._static_keys))

    @staticmethod
    def _resolve_outputs(nodes: Sequence[OvNode], outputs: Sequence[str] | None) -> dict[str, Key]:
        names: dict[str, Key] = {}
        for i, n in enumerate(nodes):
            for k, tensor_names in enumerate(n.tensor_names):
                names.setdefault(f"{n.name}:{k}", (i, k))
                for t in tensor_names:
                    names.setdefault(t, (i, k))
            names.setdefault(n.name, (i, 0))
        if outputs is None:
            result = {}
            for n in nodes:
                if n.type == "Result":
                    i, k = n.inputs[0]
                    tn = nodes[i].tensor_names[k] if k < len(nodes[i].tensor_names) else ()
                    result[sorted(tn)[0] if tn else f"{nodes[i].name}:{k}"] = (i, k)
            return result
        missing = [o for o in outputs if o not in names]
        if missing:
            near = difflib.get_close_matches(missing[0], list(names), n=5)
            raise OvTorchError(f"unknown output name(s) {missing}: not a node friendly name or "
                               f"tensor name of the graph; close: {near}")
        return {o: names[o] for o in outputs}

    @staticmethod
    def _needed(nodes: Sequence[OvNode], roots: set[Key]) -> set[int]:
        todo, seen = [i for i, _ in roots], set()
        while todo:
            i = todo.pop()
            if i not in seen:
                seen.add(i)
                todo.extend(j for j, _ in nodes[i].inputs)
        return seen

    @staticmethod
    def _fold(graph: OvGraph, needed: set[int]) -> dict[Key, torch.Tensor]:
        """Values of every output computable from constants alone (weights, shape constants)."""
        static: dict[Key, torch.Tensor] = {}
        with torch.no_grad():
            for i in sorted(needed):
                node = graph.nodes[i]
                if node.type == "Constant":
                    static[(i, 0)] = graph.constants[i]
                elif node.type not in ("Parameter", "Result") and node.inputs and all(
                    key in static for key in node.inputs
                ):
                    out = _run(node, OPS[node.type], [static[k] for k in node.inputs])
                    for k, o in enumerate(out):
                        static[(i, k)] = o
        return static

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self._params):
            raise OvTorchError(f"{self.source}: expected {len(self._params)} input(s), got {len(inputs)}")
        values: dict[Key, torch.Tensor] = {k: getattr(self, n) for k, n in self._static_keys.items()}
        values.update(self._ints)
        for i, x, shape in zip(self._params, inputs, self.input_shapes, strict=True):
            if shape and (x.ndim != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:])):
                raise OvTorchError(
                    f"{self.source}: input {tuple(x.shape)} does not fit (batch, *{list(shape[1:])})"
                )
            values[(i, 0)] = x
        for step in self._steps:
            out = _run(step.node, step.fn, [values[k] for k in step.node.inputs])
            for k in step.keep:
                values[(step.index, k)] = out[k]
            for key in step.free:
                del values[key]  # frees activations early: batch 1024 would not fit otherwise
        return {name: values[key] for name, key in self.outputs.items()}


def _fuse_bias(nodes: Sequence[OvNode], static: dict[Key, torch.Tensor], runtime: list[int],
               returned: set[Key]) -> tuple[OvNode, ...]:
    """Conv -> Add(constant (1, C, 1, 1)) becomes conv with a bias: one pass less over memory."""
    users: dict[Key, list[int]] = {}
    for i in runtime:
        for key in nodes[i].inputs:
            users.setdefault(key, []).append(i)
    out = list(nodes)
    for i in runtime:
        if nodes[i].type not in ("Convolution", "GroupConvolution") or (i, 0) in returned:
            continue
        consumers, w = users.get((i, 0), []), static.get(nodes[i].inputs[1])
        if len(consumers) != 1 or nodes[consumers[0]].type != "Add" or w is None:
            continue
        j = consumers[0]
        other = next(k for k in nodes[j].inputs if k != (i, 0))
        bias = static.get(other)
        group = nodes[i].type == "GroupConvolution"
        channels, rank = (w.shape[0] * w.shape[1], w.ndim - 1) if group else (w.shape[0], w.ndim)
        if bias is None or not bias.is_floating_point() or tuple(bias.shape) != (
            1, channels, *[1] * (rank - 2)
        ):
            continue
        out[i] = replace(nodes[i], inputs=(*nodes[i].inputs, other))
        out[j] = replace(nodes[j], type="Identity", inputs=((i, 0),))
    return tuple(out)


def _run(node: OvNode, fn: Callable[..., Any], args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    try:
        out = fn(node.attrs, *args)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        shapes = [tuple(a.shape) for a in args]
        raise OvTorchError(f"node {node.name!r} ({node.type}) failed on inputs {shapes}: {err}") from err
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


# ---- reading, exporting and loading graphs ----


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def read_ir(xml: str | Path | Any) -> OvGraph:
    """Read an OpenVINO IR (``.xml`` + ``.bin`` beside it, or an ``ov.Model``) into an ``OvGraph``."""
    import openvino as ov

    model = xml if isinstance(xml, ov.Model) else ov.Core().read_model(str(xml))
    source = model.get_friendly_name() if isinstance(xml, ov.Model) else Path(xml).name
    ops = model.get_ordered_ops()
    index = {op.get_name(): i for i, op in enumerate(ops)}
    nodes, constants = [], {}
    for i, op in enumerate(ops):
        kind = op.get_type_name()
        if kind == "Constant":
            constants[i] = torch.from_numpy(np.array(op.get_data(), copy=True))
        inputs = tuple(
            (index[src.get_node().get_name()], src.get_index())
            for src in (inp.get_source_output() for inp in op.inputs())
        )
        attrs = {} if kind == "Constant" else _jsonable(op.get_attributes())
        names = tuple(tuple(sorted(o.get_names())) for o in op.outputs())
        nodes.append(OvNode(op.get_friendly_name(), kind, attrs, inputs, names))
    return OvGraph(tuple(nodes), constants, source)


def from_openvino(xml: str | Path, outputs: Sequence[str] | None = None) -> OvTorchModule:
    """An IR as a torch module (float32 buffers); needs openvino."""
    return OvTorchModule(read_ir(xml), outputs)


def export(xml: str | Path, out_dir: str | Path) -> Path:
    """Write ``graph.json`` + ``weights.safetensors`` for ``xml`` into ``out_dir``; returns it."""
    from safetensors.torch import save_file

    graph = read_ir(xml)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": graph.source,
        "nodes": [
            {"name": n.name, "type": n.type, "attrs": n.attrs,
             "inputs": [list(k) for k in n.inputs], "tensor_names": [list(t) for t in n.tensor_names]}
            for n in graph.nodes
        ],
    }
    (out / "graph.json").write_text(json.dumps(doc, separators=(",", ":")))
    tensors = {str(i): t.contiguous() for i, t in graph.constants.items()}
    save_file(tensors, str(out / "weights.safetensors"), metadata={"format": FORMAT})
    log.info("exported %s (%d ops, %d constants) to %s", graph.source, len(graph.nodes),
             len(tensors), out)
    return out


def load_exported(path: str | Path, outputs: Sequence[str] | None = None) -> OvTorchModule:
    """A module from an ``export`` folder; needs only torch and safetensors."""
    from safetensors.torch import load_file

    folder = Path(path)
    graph_file, weights_file = folder / "graph.json", folder / "weights.safetensors"
    for f in (graph_file, weights_file):
        if not f.is_file():
            raise OvTorchError(f"{f} not found: write it with refind.models.ov_torch.export(xml, {folder})")
    doc = json.loads(graph_file.read_text())
    if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
        raise OvTorchError(f"{graph_file}: format {doc.get('format')!r} version "
                           f"{doc.get('version')!r}, expected {FORMAT!r} version {FORMAT_VERSION}")
    nodes = tuple(
        OvNode(n["name"], n["type"], n["attrs"], tuple((int(j), int(k)) for j, k in n["inputs"]),
               tuple(tuple(t) for t in n["tensor_names"]))
        for n in doc["nodes"]
    )
    constants = {int(k): v for k, v in load_file(str(weights_file)).items()}
    missing = [i for i, n in enumerate(nodes) if n.type == "Constant" and i not in constants]
    if missing:
        raise OvTorchError(f"{weights_file} lacks constants for nodes {missing[:5]}")
    return OvTorchModule(OvGraph(nodes, constants, doc.get("source", "")), outputs)
