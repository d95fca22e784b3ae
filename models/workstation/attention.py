"""Fuse each exported attention into one ONNX `Attention` node (opset 23).

The TorchScript exporter writes attention as MatMul(Q, K^T) -> Mul(scale) -> Softmax ->
MatMul(., V). tract maps an ONNX `Attention` node to its fused SDPA op, which runs every
(mask, head) pair as one blocked kernel instead of two batched matmuls that pack both
operands on every call, with no [N, H, T, T] score tensor in between: the per-head
50x64x50 (encoder) and 197x32x197 (decoder) products were where tract lost most time to
onnxruntime. The maths is the same softmax(Q K^T * scale) V; `test_export.py` checks the
outputs against the unfused graph and torch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

ATTENTION_OPSET = 23  # the first opset with `Attention`


def _constant_scalar(graph: onnx.GraphProto, name: str) -> float | None:
    for init in graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value) if value.size == 1 else None
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = numpy_helper.to_array(node.attribute[0].t)
            return float(value) if value.size == 1 else None
    return None


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise ValueError(f"cannot fuse attention: {why}")


def _perm(node: onnx.NodeProto) -> list[int]:
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0]


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Raise the model to opset 23 (onnx's version converter rewrites the ops whose
    signature changed since, e.g. ReduceMean's axes), then replace every MatMul ->
    Mul(scalar) -> Softmax(last axis) -> MatMul chain whose operands are the
    [N, T, H, d] -> [N, H, T, d] transposes of Q, K (as K^T) and V with one `Attention`
    node. Returns the new model and how many were fused; raises ValueError if a Softmax
    does not sit in that exact pattern (a graph this code does not know)."""
    model = version_converter.convert_version(model, ATTENTION_OPSET)
    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str) -> onnx.NodeProto:
        users = consumers.get(name, [])
        _require(len(users) == 1, f"{name} feeds {len(users)} nodes, expected one")
        return users[0]

    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for softmax in [n for n in g.node if n.op_type == "Softmax"]:
        axis = [a.i for a in softmax.attribute if a.name == "axis"]
        _require(axis in ([], [-1], [3]), f"{softmax.name} is over axis {axis}, not the last")
        mul = producer[softmax.input[0]]
        _require(mul.op_type == "Mul", f"{softmax.name} is fed by {mul.op_type}, not a scale")
        scale = _constant_scalar(g, mul.input[1])
        _require(scale is not None, f"{mul.name}: the scale is not a constant scalar")
        qk = producer[mul.input[0]]
        _require(qk.op_type == "MatMul", f"{mul.name} is fed by {qk.op_type}, not Q K^T")
        pv = only_consumer(softmax.output[0])
        _require(pv.op_type == "MatMul" and pv.input[0] == softmax.output[0],
                 f"{softmax.name} feeds {pv.op_type}, not the product with V")
        only_consumer(qk.output[0])
        only_consumer(mul.output[0])
        q, kt, v = (producer[qk.input[0]], producer[qk.input[1]], producer[pv.input[1]])
        for node, perm in ((q, [0, 2, 1, 3]), (kt, [0, 2, 3, 1]), (v, [0, 2, 1, 3])):
            _require(node.op_type == "Transpose" and _perm(node) == perm,
                     f"{node.name} is not the [N, T, H, d] transpose {perm}")
        # K^T [N, H, d, T] becomes K [N, H, T, d], the layout `Attention` takes.
        only_consumer(kt.output[0])
        next(a for a in kt.attribute if a.name == "perm").ints[:] = [0, 2, 1, 3]
        name = softmax.name.rsplit("/", 1)[0] + "/Attention"
        replaced[id(pv)] = helper.make_node(
            "Attention", [qk.input[0], qk.input[1], pv.input[1]], [pv.output[0]], name=name,
            scale=float(np.float32(scale)))
        dropped |= {id(qk), id(mul), id(softmax)}
    nodes = [replaced.get(id(n), n) for n in g.node if id(n) not in dropped]
    used = {name for n in nodes for name in n.input}
    # The scale constants now feed nothing.
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    del g.node[:]
    g.node.extend(nodes)
    return model, len(replaced)
