"""The ONNX project's backend node tests, run through edgeinfer's decode -> run -> encode path.

Each test is a ``model.onnx`` with ``input_*.pb`` and ``output_*.pb`` files. The
inputs become one ``.npz`` reading (exact for every dtype, NaN included); the
reading is decoded by the module's decoder, run by its runner on ONNX Runtime,
encoded as the result JSON the module publishes, and the JSON outputs are
compared with the expected ones. Tests with a sequence, map or optional input
or output are not tensor-only and are counted apart.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
from onnx import numpy_helper

from edgeinfer.errors import ModelError, ReadingError
from edgeinfer.manifest.document import Manifest
from edgeinfer.model.interpretation import interpret
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.pipeline.decode import Decoder
from edgeinfer.pipeline.encode import encode_result
from edgeinfer.pipeline.runner import Runner
from edgeinfer.runtimes.onnx import OnnxModel

RTOL, ATOL = 1e-3, 1e-7  # the tolerances of ONNX's own backend test runner


@dataclass(frozen=True)
class Outcome:
    """How a node test went through the module's path.

    ``passed``: the JSON outputs equal the expected ones. ``refused``: refused
    at load, with a reason naming the input or output. ``runtime``: ONNX
    Runtime itself, run directly on the same inputs, gives the same (or fails
    the same way): a difference between ONNX Runtime and ONNX's reference, not
    the module's. ``failed``: the module's path differs from ONNX Runtime's own
    answer. ``not_tensor_only``: a sequence, map or optional input or output.
    """

    case: str
    status: str
    reason: str = ""


def tensor_only(model: onnx.ModelProto) -> bool:
    values = [*model.graph.input, *model.graph.output]
    return all(v.type.HasField("tensor_type") for v in values)


def load_case(case: Path) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, Any]] | None:
    model = onnx.load(str(case / "model.onnx"), load_external_data=False)
    if not tensor_only(model):
        return None
    data = case / "test_data_set_0"
    initialized = {i.name for i in model.graph.initializer}
    names_in = [i.name for i in model.graph.input if i.name not in initialized]
    names_out = [o.name for o in model.graph.output]
    inputs = {n: _tensor(data / f"input_{i}.pb") for i, n in enumerate(names_in)}
    outputs = {n: _tensor(data / f"output_{i}.pb") for i, n in enumerate(names_out)}
    return model, inputs, outputs


def _tensor(path: Path) -> Any:
    proto = onnx.TensorProto()
    proto.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(proto)


def run_case(case: Path) -> Outcome:
    name = case.name
    loaded_case = load_case(case)
    if loaded_case is None:
        return Outcome(name, "not_tensor_only")
    _, inputs, expected = loaded_case
    try:
        model = OnnxModel(case / "model.onnx")
    except ModelError as exc:
        return Outcome(name, "refused", str(exc).replace(str(case), name)[:300])
    try:
        return _through_the_pipeline(name, model, inputs, expected)
    finally:
        model.close()


def _through_the_pipeline(
    name: str, model: OnnxModel, inputs: dict[str, Any], expected: dict[str, Any]
) -> Outcome:
    loaded = LoadedModel(model, Manifest(name, "1"), Path(name), "")
    buf = io.BytesIO()
    np.savez(buf, **{name: _savable(v) for name, v in inputs.items()})
    decoder = Decoder(model.inputs, 1 << 30, allow_non_finite=True, axes=loaded.batch_axes)
    try:
        reading = decoder.decode(buf.getvalue())
    except ReadingError as exc:
        return Outcome(name, "failed", f"the reading was refused: {exc}")
    answers, _ = Runner(1).answer(loaded, [reading])
    answer = answers[0]
    direct = _run_directly(model, inputs)
    if isinstance(answer, ReadingError):
        reason = f"{answer.code}: {answer.reason}"[:300]
        same = isinstance(direct, Exception)
        return Outcome(name, "runtime" if same else "failed", reason)
    fields = interpret(loaded, answer).fields
    doc = orjson.loads(encode_result("t", loaded.identity, answer, None, None, 0.0, fields))
    for out_name, want in expected.items():
        problem = _compare(doc["outputs"].get(out_name), want)
        if problem:
            if isinstance(direct, Exception):
                return Outcome(name, "failed", f"output {out_name!r}: {problem}")
            ours = _compare(doc["outputs"].get(out_name), direct[out_name])
            status = "runtime" if not ours else "failed"
            return Outcome(name, status, f"output {out_name!r}: {problem}")
    return Outcome(name, "passed")


def _run_directly(model: OnnxModel, inputs: dict[str, Any]) -> dict[str, Any] | Exception:
    """ONNX Runtime's own answer, through the same session, without decode or encode."""
    try:
        return dict(model.run(inputs))
    except ModelError as exc:
        return exc


def _savable(value: Any) -> Any:
    """Strings as unicode (objects would need pickle); bfloat16 and float8 as raw voids,
    which numpy can read back (their own descriptors it cannot)."""
    if value.dtype.kind == "O":
        return value.astype(str)
    if value.dtype.kind == "V" or value.dtype.name.startswith(("bfloat", "float8")):
        return value.view(f"V{value.dtype.itemsize}")
    return value


def _compare(got: Any, want: Any) -> str:
    """Why the JSON value ``got`` is not ``want`` (empty when it is)."""
    want = np.asarray(want)
    if want.dtype.kind in "OUS":
        return "" if np.asarray(got, dtype=object).tolist() == want.tolist() else "strings differ"
    if want.size == 0:
        return "" if np.asarray(got).size == 0 else f"expected empty, got {got!r}"[:200]
    if want.dtype.kind == "V" or want.dtype.name.startswith(("bfloat", "float8")):
        want = want.astype(np.float32)
    # JSON has no NaN or infinity: the module writes null for them.
    finite = np.isfinite(want) if want.dtype.kind in "fc" else np.ones(want.shape, bool)
    raw = np.asarray(got, dtype=object)
    if raw.shape != want.shape:
        return f"shape {list(raw.shape)}, expected {list(want.shape)}"
    if not np.array_equal(raw == None, ~finite):  # noqa: E711 (elementwise)
        return "non-finite values differ"
    if not finite.any():
        return ""
    values = raw[finite].astype(np.float64 if want.dtype.kind in "fc" else want.dtype)
    target = want[finite]
    if want.dtype.kind in "fc":
        close = np.allclose(values, target.astype(np.float64), rtol=RTOL, atol=ATOL)
        return "" if close else f"values differ (largest gap {np.abs(values - target).max():.3g})"
    return "" if np.array_equal(values, target) else "values differ"
