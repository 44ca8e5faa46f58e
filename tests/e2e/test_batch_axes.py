"""Which dimension is the batch: the README's rule, on models built for each case.

The batch axis is the dimension whose name the inputs and outputs share, else a
tensor's own unnamed dynamic first (or only) dimension, else a first dimension of
1. A name only an input has (an OCR model's ``image_width``) is no batch axis, and
exporters' generated names (``unk__214`` on the input, ``unk__215`` on the output)
are shared by nothing. ``edgeinfer inspect`` names the dimension it took on every
input and output; a reading sent without its batch dimension fits the model.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto, helper

from edgeinfer.tools.broker import LocalBroker
from tests.support import Collector, ModuleProcess, Publisher

Shape = list[int | str | None]


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def ocr_model(path: Path, width: str | None, out: Shape) -> Path:
    """A text-line recogniser: image ``[1, 1, 64, width]`` in, scores per column out.

    ``out`` is ``[1, 37]`` (columns averaged) or ``[1, T, 37]`` (one row of 37
    scores per column: T follows the width, under a name of the output's own).
    """
    weights = np.linspace(-1, 1, 37, dtype=np.float32).reshape(1, 37)
    if len(out) == 2:
        nodes = [
            helper.make_node("ReduceMean", ["image", "hw"], ["m"], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["scores"]),
        ]
        axes = [2, 3]
    else:
        nodes = [
            helper.make_node("ReduceMean", ["image", "h"], ["m"], keepdims=0),
            helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["t", "w"], ["scores"]),
        ]
        axes = [2]
    graph = helper.make_graph(
        nodes,
        "ocr",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 64, width])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, out)],
        [
            helper.make_tensor(
                "hw" if len(out) == 2 else "h", TensorProto.INT64, [len(axes)], axes
            ),
            helper.make_tensor("w", TensorProto.FLOAT, [1, 37], weights),
        ],
    )
    return save(graph, path)


def dense_model(path: Path, x: Shape, y: Shape) -> Path:
    """y = x @ W: input ``x`` of 3 features, output ``y`` of 2, their shapes as declared."""
    weights = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 2], weights)],
    )
    return save(graph, path)


def inspect(path: Path) -> tuple[str, dict[str, Any]]:
    """``edgeinfer inspect`` as a user runs it: the ``batch`` line, and the ``--json`` document."""
    runs = [
        subprocess.run(
            [sys.executable, "-m", "edgeinfer", "inspect", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        for extra in ((), ("--json",))
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    lines = [line for line in runs[0].stdout.splitlines() if line.startswith("  batch ")]
    assert len(lines) == 1, runs[0].stdout
    return lines[0].split(None, 1)[1], orjson.loads(runs[1].stdout)


@pytest.mark.parametrize(
    ("width", "out", "output_axis"),
    [
        ("image_width", [1, 37], "scores: axis 0 (size 1)"),
        ("image_width", [1, "seq", 37], "scores: axis 0 (size 1)"),
        ("W", [1, "T", 37], "scores: axis 0 (size 1)"),
    ],
)
def test_a_named_dimension_only_the_input_has_is_no_batch_axis(
    tmp_path: Path, width: str, out: Shape, output_axis: str
) -> None:
    line, doc = inspect(ocr_model(tmp_path / "ocr.onnx", width, out))
    assert line == (
        f"inputs image: axis 0 (size 1); outputs {output_axis}; one reading at a time "
        "(input 'image' takes one reading at a time (batch of 1))"
    )
    assert doc["batching"] == line


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (
            ["N", 3],
            ["N", 2],
            "inputs x: axis 0 ('N'); outputs y: axis 0 ('N'); "
            "batched (the dimension 'N' the inputs and outputs share)",
        ),
        (
            ["unk__214", 3],
            ["unk__215", 2],
            "inputs x: axis 0 ('unk__214'); outputs y: axis 0 ('unk__215'); "
            "batched (no dimension name is shared: each one's unnamed dynamic dimension)",
        ),
        (
            [None, 3],
            ["", 2],
            "inputs x: axis 0 (unnamed); outputs y: axis 0 (unnamed); "
            "batched (no dimension name is shared: each one's unnamed dynamic dimension)",
        ),
        (
            ["p2o.DynamicDimension.0", 3],
            ["p2o.DynamicDimension.1", 2],
            "inputs x: axis 0 ('p2o.DynamicDimension.0'); "
            "outputs y: axis 0 ('p2o.DynamicDimension.1'); "
            "batched (no dimension name is shared: each one's unnamed dynamic dimension)",
        ),
        (
            [1, 3],
            [1, 2],
            "inputs x: axis 0 (size 1); outputs y: axis 0 (size 1); "
            "one reading at a time (input 'x' takes one reading at a time (batch of 1))",
        ),
        (
            ["rows", 3],
            [1, 2],
            "inputs x: none; outputs y: axis 0 (size 1); "
            "one reading at a time (no input has a batch axis)",
        ),
    ],
    ids=["shared-name", "exporter-names", "unnamed", "paddle-name", "fixed-one", "input-name"],
)
def test_inspect_names_the_dimension_taken_on_each_side(
    tmp_path: Path, x: Shape, y: Shape, expected: str
) -> None:
    # The "input-name" model reduces its rows (y is [1, 2] whatever x holds): its named
    # first dimension is a length, not a batch, and the whole input is one reading.
    if x[0] == "rows":
        graph = helper.make_graph(
            [
                helper.make_node("ReduceSum", ["x", "zero"], ["s"], keepdims=1),
                helper.make_node("MatMul", ["s", "w"], ["y"]),
            ],
            "rows",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
            [
                helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                helper.make_tensor("w", TensorProto.FLOAT, [3, 2], np.ones((3, 2), np.float32)),
            ],
        )
        path = save(graph, tmp_path / "rows.onnx")
    else:
        path = dense_model(tmp_path / "dense.onnx", x, y)
    line, doc = inspect(path)
    assert line == expected
    assert doc["batching"] == line


def post(port: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/predict", orjson.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, orjson.loads(answer.read())
    finally:
        conn.close()


@pytest.mark.parametrize("out", [[1, 37], [1, "seq", 37]], ids=["pooled", "per-column"])
def test_a_line_image_without_its_batch_dimension_is_answered_over_mqtt_and_http(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    out: Shape,
) -> None:
    path = ocr_model(tmp_path / "ocr.onnx", "image_width", out)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    lines = {width: rng.random((1, 64, width), dtype=np.float32) for width in (40, 57)}
    module = ModuleProcess(broker.url, path, tmp_path).start()
    modules.append(module)
    sink = collector([module.result_topic("+"), module.errors_topic])
    pub = publisher()
    for width, line in lines.items():
        pub.send(module.topic("line"), {"id": width, "features": line.tolist()})
    # A 64 x W image without its channel: W is not known, so no count of values fits.
    pub.send(module.topic("line"), {"id": "bare", "features": lines[40][0].tolist()})
    sink.wait_for(3)
    results = {d["id"]: d for d in sink.docs("/inference/")}
    errors = {d["id"]: d for d in sink.docs("/errors")}
    for width, line in lines.items():
        want = session.run(None, {"image": line[np.newaxis]})[0]
        assert width in results, errors
        np.testing.assert_allclose(results[width]["outputs"]["scores"], want, rtol=1e-5)
    assert errors["bare"]["error"] == "wrong_shape"
    assert errors["bare"]["reason"] == (
        "input 'image' got shape [64, 40] (2560 values): expected values shaped [1, 64, ?]"
    )
    status, answer = post(module.http_port, {"id": "h", "features": lines[57].tolist()})
    assert status == 200, answer
    np.testing.assert_allclose(
        answer["outputs"]["scores"],
        session.run(None, {"image": lines[57][np.newaxis]})[0],
        rtol=1e-5,
    )
    status, answer = post(module.http_port, {"id": "h2", "features": lines[57][0].tolist()})
    assert status == 400, answer
    assert answer["reason"] == (
        "input 'image' got shape [64, 57] (3648 values): expected values shaped [1, 64, ?]"
    )
    pub.flush()


def test_a_reading_without_its_batch_dimension_fits_a_model_of_exporter_names(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
) -> None:
    path = dense_model(tmp_path / "dense.onnx", ["unk__214", 3], ["unk__215", 2])
    module = ModuleProcess(broker.url, path, tmp_path).start()
    modules.append(module)
    sink = collector([module.result_topic("+"), module.errors_topic])
    pub = publisher()
    pub.send(module.topic("row"), {"id": 1, "features": [1.0, 2.0, 3.0]})
    pub.send(module.topic("row"), {"id": 2, "features": [[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]})
    pub.send(module.topic("row"), {"id": 3, "features": [1.0, 2.0]})
    sink.wait_for(3)
    results = {d["id"]: d for d in sink.docs("/inference/")}
    errors = {d["id"]: d for d in sink.docs("/errors")}
    assert results[1]["outputs"] == {"y": [[4.0, 5.0]]}
    assert results[2]["outputs"] == {"y": [[4.0, 5.0], [0.0, 1.0]]}
    assert errors[3]["reason"] == "input 'x' got shape [2] (2 values): expected 3 values shaped [3]"
    pub.flush()
