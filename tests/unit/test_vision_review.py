"""Camera readings at their edges: what a review found wrong, each pinned by a test."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
from PIL import Image

from edgeinfer.errors import ModelError
from edgeinfer.manifest.postprocess import DetectSpec
from edgeinfer.manifest.vision import PreprocessSpec, ResizeSpec
from edgeinfer.pipeline.decode import Decoder
from edgeinfer.runtimes.base import TensorSpec
from edgeinfer.vision.detect import Detector
from edgeinfer.vision.images import decode_image
from edgeinfer.vision.plan import Answer, uncertain
from edgeinfer.vision.preprocess import Preprocessor

NCHW = (TensorSpec("x", np.dtype(np.float32), (None, 3, 4, 6)),)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_a_declared_size_other_than_the_inputs_is_refused_at_load() -> None:
    """Else every image of an update that passed its (tensor) self-test fails wrong_shape."""
    spec = PreprocessSpec(resize=ResizeSpec(mode="stretch", width=8, height=4))
    with pytest.raises(ModelError, match=r"preprocess.resize.width = 8: .* expected 6 or nothing"):
        Preprocessor(spec, NCHW)
    Preprocessor(PreprocessSpec(resize=ResizeSpec(mode="stretch", width=6, height=4)), NCHW)


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    for color in ("L", "RGB"):
        pixels = np.asarray(decode_image(png(ramp), color, 10**6))
        assert pixels.min() == 0 and pixels.max() == 255
        assert pixels.mean() == pytest.approx(127.5, abs=1.0), color  # clipped: ~255


def test_a_classifier_with_k_1_is_still_judged_by_its_margin() -> None:
    """topk k=1 shows one class; the cascade's margin still compares the best two."""
    from edgeinfer.manifest.document import Manifest
    from edgeinfer.runtimes.fake import FakeModel
    from edgeinfer.vision.plan import VisionPlan

    out = (TensorSpec("p", np.dtype(np.float32), (None, 3)),)
    model = FakeModel(NCHW, out, lambda feeds: {"p": np.zeros((1, 3), np.float32)})
    manifest = Manifest.from_doc(
        {"name": "m", "labels": ["a", "b", "c"], "postprocess": {"type": "topk", "k": 1}}, "m"
    )
    plan = VisionPlan(model, manifest, None)
    answer = plan.answer({"p": np.array([[0.55, 0.45, 0.0]], np.float32)}, None)
    assert [t["label"] for t in answer.fields["top"]] == ["a"]
    assert uncertain(answer, None, 0.3)
    sure = plan.answer({"p": np.array([[0.9, 0.05, 0.05]], np.float32)}, None)
    assert not uncertain(sure, None, 0.3)


def test_a_detector_is_uncertain_only_about_a_weak_detection() -> None:
    assert not uncertain(Answer({}, [], False, True), 0.6, None)  # nothing found: not unsure
    assert not uncertain(Answer({}, [0.95, 0.93], False, True), 0.6, 0.3)  # two sure objects
    assert uncertain(Answer({}, [0.95, 0.4], False, True), 0.6, None)


def test_yolo_rows_are_read_by_the_class_count_when_candidates_are_few() -> None:
    """[1, 84, 84]: as many candidates as 4 + 80 classes; the labels tell the layout."""
    spec = DetectSpec("yolo", 0.5, 0.5)
    detector = Detector(spec, ["out"], (64, 64), classes=80)
    rows = np.zeros((84, 84), np.float32)  # [4 + classes, N]: one column per candidate
    rows[:4, 7] = [32, 32, 10, 20]  # cx, cy, w, h of candidate 7
    rows[4 + 3, 7] = 0.9  # class 3
    found = detector.detect({"out": rows[np.newaxis]}, None)
    assert [(cls, score) for _, score, cls in found] == [(3, pytest.approx(0.9))]
    assert found[0][0] == pytest.approx([27, 22, 37, 42])


def test_an_escalated_reading_is_marked_so_it_is_not_escalated_again() -> None:
    spec = PreprocessSpec(resize=ResizeSpec(mode="stretch"))
    decoder = Decoder(NCHW, 1 << 20, images=(Preprocessor(spec, NCHW), 10_000))
    image = png(np.zeros((8, 12, 3), np.uint8))
    plain = {"payload": base64.b64encode(image).decode(), "id": "a"}
    escalated = {**plain, "escalation": {"module_id": "edge", "result": {}}}
    assert decoder.decode(orjson.dumps(plain)).escalated is False
    assert decoder.decode(orjson.dumps(escalated)).escalated is True
    # A JSON reading whose text merely mentions "payload" is not taken for an envelope.
    inner = orjson.dumps({"features": [[[0.0] * 6] * 4] * 3, "note": "payload"})
    wrapped = {"payload": base64.b64encode(inner).decode(), "id": "b"}
    assert decoder.decode(orjson.dumps(wrapped)).id == "b"
