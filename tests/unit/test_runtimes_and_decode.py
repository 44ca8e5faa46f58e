"""Runtimes behind one interface, and the decode stage, without a broker."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from edgeinfer.errors import ModelError, ReadingError
from edgeinfer.pipeline.decode import Decoder
from edgeinfer.runtimes import detect_format, load_model
from edgeinfer.runtimes.base import TensorSpec
from edgeinfer.runtimes.fake import sum_model
from edgeinfer.runtimes.onnx import choose_providers
from edgeinfer.tools.recordings import Recordings
from tests.fakes import runtime_options
from tests.support import ONNX_MODEL, TFLITE_MODEL


def test_both_sample_models_report_their_signature_and_agree(recordings: Recordings) -> None:
    onnx_model = load_model(ONNX_MODEL)
    tflite_model = load_model(TFLITE_MODEL)
    assert [s.describe() for s in onnx_model.inputs] == ["window float32[batch, 100, 6]"]
    assert [s.describe() for s in tflite_model.inputs] == ["window float32[?, 100, 6]"]
    assert [s.name for s in tflite_model.outputs] == ["probabilities"]
    assert onnx_model.runtime.startswith("onnxruntime ")
    assert tflite_model.runtime.startswith(("ai-edge-litert ", "tflite-runtime "))
    x = recordings.windows[:8]
    a = onnx_model.run({"window": x})["probabilities"]
    b = tflite_model.run({"window": x})["probabilities"]
    assert a.shape == b.shape == (8, 4)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert list(a.argmax(axis=1)) == list(recordings.labels[:8])


def test_the_format_comes_from_the_content_not_the_name(tmp_path: Path) -> None:
    disguised = tmp_path / "model.bin"
    shutil.copy(TFLITE_MODEL, disguised)
    assert detect_format(disguised) == "tflite"
    assert load_model(disguised).format == "tflite"
    misnamed = tmp_path / "model.tflite"
    shutil.copy(ONNX_MODEL, misnamed)
    assert load_model(misnamed).format == "onnx"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"PK\x03\x04zipfile")
    with pytest.raises(ModelError, match="not a model file: expected an ONNX protobuf or a TFLite"):
        load_model(junk)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage-after-the-ir-version")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load it"):
        load_model(broken)


def test_a_missing_execution_provider_falls_back_to_cpu_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert choose_providers(["NoSuchExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "execution provider NoSuchExecutionProvider is not available" in caplog.text


def decoder(max_bytes: int = 4096) -> Decoder:
    return Decoder(sum_model(3).inputs, max_bytes)


def test_decode_adds_the_batch_dimension_and_casts_to_the_input_dtype() -> None:
    reading = decoder().decode(b'{"features": [1, 2, 3], "id": "r1", "ts": 5}')
    assert reading.feeds["x"].dtype == np.float32
    assert reading.feeds["x"].tolist() == [[1.0, 2.0, 3.0]]
    assert (reading.rows, reading.id, reading.ts) == (1, "r1", 5)
    assert decoder().decode(b"[[1, 2, 3], [4, 5, 6]]").rows == 2
    buf = io.BytesIO()
    np.save(buf, np.arange(3, dtype=np.int16))
    assert decoder().decode(buf.getvalue()).feeds["x"].tolist() == [[0.0, 1.0, 2.0]]


def test_booleans_are_cast_like_any_other_value() -> None:
    assert decoder().decode(b"[true, false, true]").feeds["x"].tolist() == [[1.0, 0.0, 1.0]]


def test_a_fixed_batch_of_one_refuses_several_rows() -> None:
    spec = TensorSpec("x", np.dtype(np.float32), (1, 3))
    with pytest.raises(ReadingError) as info:
        Decoder((spec,), 4096).decode(b"[[1, 2, 3], [4, 5, 6]]")
    assert info.value.reason == (
        "input 'x' got 2 rows: the model takes one sample of shape [3] at a time"
    )


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (
            b"[1, 2]",
            "wrong_shape",
            "input 'x' got shape [2] (2 values): expected 3 values shaped [3]",
        ),
        (
            b'{"features": [1, null, 3]}',
            "wrong_dtype",
            "input 'x' holds mixed or null values: expected numbers for float32",
        ),
        (
            b'{"features": [1, 2, 3], "inputs": {}}',
            "bad_payload",
            'payload has both "features" and "inputs": expected one of them',
        ),
        (
            b'{"inputs": [1, 2, 3]}',
            "bad_payload",
            "\"inputs\" must be an object mapping input names to arrays, expected keys ['x']",
        ),
        (
            orjson.dumps({"features": [0.0] * 2000}),
            "oversize",
            "payload is 8014 bytes, expected at most 4096 (pipeline.max_payload_bytes)",
        ),
    ],
)
def test_decode_errors_name_what_was_expected(payload: bytes, code: str, reason: str) -> None:
    with pytest.raises(ReadingError) as info:
        decoder().decode(payload)
    assert (info.value.code, info.value.reason) == (code, reason)


def test_integer_inputs_refuse_fractions_and_out_of_range_values() -> None:
    spec = TensorSpec("k", np.dtype(np.int8), (None, 1))
    dec = Decoder((spec,), 4096)
    assert dec.decode(b"[3.0]").feeds["k"].tolist() == [[3]]
    with pytest.raises(ReadingError, match=r"holds values outside int8 range \[-128, 127\]"):
        dec.decode(b"[300]")


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def refusal(decoder: Decoder, payload: bytes) -> tuple[str, str]:
    with pytest.raises(ReadingError) as info:
        decoder.decode(payload)
    return info.value.code, info.value.reason


def test_a_cast_that_would_change_a_value_is_refused_naming_the_range() -> None:
    f32 = Decoder((TensorSpec("x", np.dtype(np.float32), (None, 2)),), 10_000)
    assert refusal(f32, b'{"features": [1e39, 1]}') == (
        "wrong_dtype",
        "input 'x' holds values outside float32 range [-3.4028235e+38, 3.4028235e+38]",
    )
    np.testing.assert_array_equal(
        f32.decode(b"[3e38, -3e38]").feeds["x"], np.array([[3e38, -3e38]], np.float32)
    )
    i32 = Decoder((TensorSpec("k", np.dtype(np.int32), (None, 1)),), 10_000)
    outside = "input 'k' holds values outside int32 range [-2147483648, 2147483647]"
    assert refusal(i32, npy(np.array([2147483648.0], np.float32))) == ("wrong_dtype", outside)
    assert refusal(i32, b"[2147483648]") == ("wrong_dtype", outside)
    assert refusal(i32, b"[-2147483649.0]") == ("wrong_dtype", outside)
    assert i32.decode(b"[2147483647]").feeds["k"].tolist() == [[2147483647]]
    assert i32.decode(b"[-2147483648.0]").feeds["k"].tolist() == [[-2147483648]]
    i64 = Decoder((TensorSpec("n", np.dtype(np.int64), (None, 1)),), 10_000)
    assert refusal(i64, b"[9.3e18]")[0] == "wrong_dtype"
    assert refusal(i64, npy(np.array([2**64 - 1], np.uint64)))[0] == "wrong_dtype"
    assert i64.decode(b"[9223372036854775807]").feeds["n"].tolist() == [[2**63 - 1]]
    u8 = Decoder((TensorSpec("b", np.dtype(np.uint8), (None, 1)),), 10_000)
    assert refusal(u8, b"[256]")[0] == "wrong_dtype"
    assert refusal(u8, b"[-1]")[0] == "wrong_dtype"
    assert u8.decode(b"[255]").feeds["b"].tolist() == [[255]]


def test_an_npy_header_that_declares_more_than_the_payload_carries_is_refused() -> None:
    decoder = Decoder((TensorSpec("x", np.dtype(np.float32), (None, 2)),), 10_000)
    whole = npy(np.zeros((1, 2), np.float32))
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (10**6, 10**6)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    assert refusal(decoder, buf.getvalue() + b"\x00" * 16) == (
        "bad_npy",
        ".npy header declares shape [1000000, 1000000] of float32 (4000000000000 bytes) "
        "but the payload carries 16: expected a whole array saved with numpy.save",
    )
    assert refusal(decoder, whole[:-1])[0] == "bad_npy"
    code, reason = refusal(decoder, npy(np.array([{"a": 1}], dtype=object)))
    assert code == "bad_npy"
    assert "object" in reason
    assert decoder.decode(whole).feeds["x"].shape == (1, 2)


def test_quantization_per_channel_uses_each_channels_scale_and_zero_point() -> None:
    from edgeinfer.runtimes.tflite import Quantization

    per_channel = Quantization(
        np.dtype(np.int8), np.array([0.5, 0.25], np.float32), np.array([0, -10]), axis=1
    )
    x = np.array([[1.0, 1.0], [-64.5, 100.0]], np.float32)
    q = per_channel.quantize(x)
    assert q.tolist() == [[2, -6], [-128, 127]]  # clipped at int8's range
    assert per_channel.dequantize(q).tolist() == [[1.0, 1.0], [-64.0, 34.25]]
    per_tensor = Quantization(np.dtype(np.uint8), np.array([0.1], np.float32), np.array([128]), 0)
    assert per_tensor.quantize(np.array([0.0, 1.0, -1.0])).tolist() == [128, 138, 118]


def test_a_model_whose_input_is_not_a_tensor_is_refused_at_load_naming_it(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    seq = helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["xs"], ["n"])],
        "g",
        [seq],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "seq.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(model)
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(info.value) == (
        "input 'xs' is seq(tensor(float)): expected a tensor of a numeric, bool or string type"
    )


def test_admission_keeps_a_fast_model_on_one_thread_and_gives_a_slow_one_every_core(
    tmp_path: Path,
) -> None:
    """Waking worker threads for a 50 us reading costs more CPU than it saves."""
    from edgeinfer.serving.admission import admit
    from tests.updates_support import busy_model

    fast = admit(ONNX_MODEL, None, runtime_options(self_test_runs=2))
    slow_path = tmp_path / "busy.onnx"
    slow_path.write_bytes(busy_model(layers=2, side=128))  # a few ms a reading
    slow = admit(slow_path, None, runtime_options(self_test_runs=2))
    chosen = admit(ONNX_MODEL, None, runtime_options(threads=2, self_test_runs=2))
    try:
        assert getattr(fast.model, "threads", None) == 1
        assert getattr(slow.model, "threads", None) == 0  # the runtime's default: every core
        assert getattr(chosen.model, "threads", None) == 2  # a configured count is kept
        assert 0 < fast.row_seconds < slow.row_seconds
    finally:
        for loaded in (fast, slow, chosen):
            loaded.model.close()
