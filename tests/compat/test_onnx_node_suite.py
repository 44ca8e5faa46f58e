"""A peer's test suite: ONNX's backend node tests through the module's decode -> run -> encode.

The node tests come from the ``onnx`` wheel (1.22.0, the last to carry them),
fetched into the test cache. Every tensor-only test either passes, is refused at
load with a reason naming the input or output and its type, or differs from
ONNX's reference in ONNX Runtime itself (run directly on the same inputs): the
module's own path never changes an answer. A subset goes end to end through a
real mosquitto.
"""

from __future__ import annotations

import collections
import io
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from edgeinfer.tools.broker import LocalBroker
from tests.compat.fetch import extract
from tests.compat.node_suite import _compare, _savable, load_case, run_case
from tests.support import Collector, ModuleProcess, Publisher

#: Cases where ONNX Runtime 1.x itself answers differently from ONNX's reference (or
#: fails on the inputs): numerical tolerance of its DFT/STFT, its Resize align_corners and
#: MaxUnpool, its Attention kernels, ConvInteger with padding, and random Dropout.
RUNTIME_DIFFERS = {
    "test_attention_4d_diff_heads_mask4d_padded_kv",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask_causal",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask_causal",
    "test_convinteger_with_padding",
    "test_dft",
    "test_dft_axis",
    "test_dft_axis_opset19",
    "test_dft_inverse",
    "test_dft_inverse_opset19",
    "test_dft_irfft",
    "test_dft_irfft_opset19",
    "test_dft_opset19",
    "test_dft_rfft",
    "test_dft_rfft_opset19",
    "test_stft",
    "test_stft_with_window",
    "test_maxunpool_export_with_output_shape",
    "test_resize_downsample_scales_cubic_align_corners",
    "test_resize_downsample_scales_linear_align_corners",
    "test_training_dropout",
    "test_training_dropout_default",
    "test_training_dropout_default_mask",
    "test_training_dropout_mask",
}


@pytest.fixture(scope="module")
def node_tests() -> Path:
    return extract("onnx", "onnx/backend/test/data/node/*") / "onnx/backend/test/data/node"


def test_every_tensor_only_node_test_passes_or_is_refused_at_load_with_a_reason(
    node_tests: Path,
) -> None:
    outcomes = [run_case(case) for case in sorted(node_tests.iterdir()) if case.is_dir()]
    counts = collections.Counter(o.status for o in outcomes)
    print(f"ONNX node tests through decode -> run -> encode: {dict(counts)}")
    assert [o for o in outcomes if o.status == "failed"] == []
    assert {o.case for o in outcomes if o.status == "runtime"} <= RUNTIME_DIFFERS
    assert counts["passed"] >= 1570
    for outcome in (o for o in outcomes if o.status == "refused"):
        assert re.search(
            r"^(input|output) '.+' is tensor\(\w+\): expected|ONNX Runtime cannot load it: ",
            outcome.reason,
        ), outcome


#: End to end through MQTT: numbers, bool, strings in and out, scalars, bfloat16, NaN.
THROUGH_MQTT = [
    "test_add",
    "test_argmax_default_axis_example",
    "test_where_example",
    "test_gather_0",
    "test_string_concat",
    "test_cast_FLOAT_to_FLOAT16",
    "test_size",
    "test_isnan",
    "test_range_bfloat16_type_positive_delta",
    "test_reduce_sum_default_axes_keepdims_example",
    "test_einsum_batch_matmul",
    "test_cast_FLOAT_to_BFLOAT16",
]


def test_a_subset_answers_the_same_through_mqtt_as_npz_and_as_json(
    node_tests: Path, broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path
) -> None:
    for name in THROUGH_MQTT:
        loaded = load_case(node_tests / name)
        assert loaded is not None, name
        _, inputs, expected = loaded
        model_dir = tmp_path / name
        model_dir.mkdir()
        (model_dir / "model.onnx").write_bytes((node_tests / name / "model.onnx").read_bytes())
        json_ok = all(np.isfinite(v).all() for v in inputs.values() if v.dtype.kind == "f")
        reading = {"inputs": {k: _jsonable(v) for k, v in inputs.items()}}
        manifest = {"name": name.removeprefix("test_"), "version": "1"}
        if json_ok:
            manifest["self_test"] = {"inputs": reading}
        (model_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
        nan_ok = {"EDGEINFER_PIPELINE_ALLOW_NON_FINITE": "true"}
        module = ModuleProcess(broker.url, model_dir / "model.onnx", tmp_path, env=nan_ok).start()
        modules.append(module)
        sink = Collector(broker.url, [module.result_topic("+"), module.errors_topic])
        pub = Publisher(broker.url)
        buf = io.BytesIO()
        np.savez(buf, **{k: _savable(v) for k, v in inputs.items()})
        pub.send(module.topic("npz"), buf.getvalue())
        if json_ok:
            pub.send(module.topic("json"), reading)
        sink.wait_for(2 if json_ok else 1)
        assert sink.docs("/errors") == [], (name, sink.docs("/errors"))
        for doc in sink.docs("/inference/"):
            for out, want in expected.items():
                assert _compare(doc["outputs"][out], want) == "", (name, doc["topic"], out)
        sink.close()
        pub.close()
        module.stop()


def _jsonable(value: np.ndarray) -> object:
    if value.dtype.kind == "V" or value.dtype.name.startswith(("bfloat", "float8")):
        return value.astype(np.float32).tolist()
    return value.tolist()
