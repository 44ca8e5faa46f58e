"""Models the benchmarks build for themselves (random weights: only their cost matters)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np


def heavy_mlp(path: Path, hidden: tuple[int, ...] = (2048, 2048, 1024, 4), seed: int = 0) -> Path:
    """An MLP over the HAR window (600 -> 2048 -> 2048 -> 1024 -> 4 scores): about 1 ms a
    reading alone, with a small answer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = (600, *hidden)
    nodes = [helper.make_node("Reshape", ["window", "flat"], ["h0"])]
    weights = [numpy_helper.from_array(np.array([-1, 600], np.int64), "flat")]
    for n, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{n}"))
        last = n == len(hidden) - 1
        nodes.append(
            helper.make_node("MatMul", [f"h{n}", f"w{n}"], ["scores" if last else f"m{n}"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"m{n}"], [f"h{n + 1}"]))
    graph = helper.make_graph(
        nodes,
        "heavy_mlp",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", 100, 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", hidden[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
