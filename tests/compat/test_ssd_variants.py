"""The SSD decoding options (box order, exponential sizes, ignored classes) and their limits.

End to end, against a published model and an independent reference, in
test_camera (``ssd_tf_object_detection``); here one stage at a time.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.kinds import postprocess_from_doc, postprocess_to_doc
from edgeinfer.manifest.postprocess import DetectSpec
from edgeinfer.runtimes.base import TensorSpec
from edgeinfer.vision.anchors import ssd_anchors
from edgeinfer.vision.detect import Detector
from tests.ssd_support import oidv4_manifest, tf_ssd_anchors

ONE_ANCHOR = {
    "num_layers": 1,
    "strides": [100],
    "min_scale": 0.5,
    "max_scale": 0.5,
    "interpolated_scale_aspect_ratio": 0.0,
}
SSD = {
    "type": "detect",
    "format": "ssd_anchors",
    "score_min": 0.1,
    "anchors": ONE_ANCHOR,
    "outputs": {"boxes": "r", "scores": "c"},
}


def _detector(**keys: object) -> Detector:
    spec = postprocess_from_doc({**SSD, **keys}, "manifest.json")
    assert isinstance(spec, DetectSpec)
    return Detector(spec, ["r", "c"], (100, 100))


def test_one_anchor_is_the_centred_half_of_the_input() -> None:
    assert _detector().anchors is not None
    assert _detector().anchors.tolist() == [[0.5, 0.5, 0.5, 0.5]]


def test_regressors_are_read_in_the_declared_order_and_size_encoding() -> None:
    logits = np.array([[[0.0, 3.0]]])  # class 1
    raw = np.array([[[0.2, 0.0, 0.0, 0.0]]])  # the first coordinate moved by 0.2 anchor sizes
    # x first: the centre moves right by 0.2 * 50 px; linear sizes: w = h = 0 * 50
    (box, _, _), *_ = _detector(box="cxcywh").detect({"r": raw, "c": logits}, None)
    assert box == pytest.approx([60, 50, 60, 50])
    # y first (TensorFlow's order): the centre moves down instead
    (box, _, _), *_ = _detector(box="cycxhw").detect({"r": raw, "c": logits}, None)
    assert box == pytest.approx([50, 60, 50, 60])
    # exponential sizes: exp(0) = 1 anchor size, 50 px about the moved centre
    found = _detector(box="cycxhw", box_size="exponential").detect({"r": raw, "c": logits}, None)
    assert found[0][0] == pytest.approx([25, 35, 75, 85])
    # with TF's scales (10, 10, 5, 5), th = 5 * ln 2 doubles the height
    raw = np.array([[[0.0, 0.0, 5 * math.log(2), 0.0]]])
    tf = _detector(box="cycxhw", box_size="exponential", box_scale=[10, 10, 5, 5])
    assert tf.detect({"r": raw, "c": logits}, None)[0][0] == pytest.approx([25, 0, 75, 100])


def test_a_wild_exponential_regressor_makes_a_finite_box() -> None:
    raw = np.array([[[0.0, 0.0, 1e6, 1e6]]])
    found = _detector(box_size="exponential").detect({"r": raw, "c": np.array([[[4.0]]])}, None)
    assert np.isfinite(found[0][0]).all()


def test_ignored_classes_are_never_reported_and_the_best_other_class_is() -> None:
    raw = np.zeros((1, 1, 4))
    logits = np.array([[[5.0, 1.0, 2.0]]])  # the background (0) would win
    assert _detector().detect({"r": raw, "c": logits}, None)[0][2] == 0
    (_, score, cls), *_ = _detector(ignore_classes=[0]).detect({"r": raw, "c": logits}, None)
    assert cls == 2 and score == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert _detector(ignore_classes=[0, 1, 2]).detect({"r": raw, "c": logits}, None) == []


def test_ignored_classes_drop_decoded_boxes_by_their_class_output() -> None:
    roles = (("boxes", "b"), ("classes", "k"), ("scores", "s"))
    spec = DetectSpec("boxes", 0.1, 0.5, outputs=roles, ignore_classes=(7,))
    detector = Detector(spec, ["b", "k", "s"], (100, 100))
    outputs = {
        "b": np.array([[[0, 0, 10, 10], [50, 50, 60, 60]]]),
        "s": np.array([[0.9, 0.8]]),
        "k": np.array([[7.0, 3.0]]),
    }
    assert [cls for _, _, cls in detector.detect(outputs, None)] == [3]


def test_the_declared_anchors_are_the_object_detection_apis_for_ssd_mobilenet() -> None:
    spec = postprocess_from_doc(oidv4_manifest()["postprocess"], "manifest.json")
    assert isinstance(spec, DetectSpec) and spec.anchors is not None
    ours = ssd_anchors(spec.anchors, 300, 300).astype(np.float64)
    theirs = tf_ssd_anchors()[:, [1, 0, 3, 2]]  # (y, x, h, w) as (x, y, w, h)
    assert ours.shape == (1917, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_the_ssd_options_survive_the_stored_manifest() -> None:
    doc = {"name": "m", **oidv4_manifest()}
    first = Manifest.from_doc(doc, "manifest.json")
    again = Manifest.from_doc(orjson.loads(first.to_json()), "again")
    assert again.postprocess == first.postprocess
    assert isinstance(again.postprocess, DetectSpec)
    assert again.postprocess.box == "cycxhw" and again.postprocess.ignore_classes == (0,)
    yolo = {"name": "m", "postprocess": {"type": "detect", "format": "yolo"}}
    stored = orjson.loads(Manifest.from_doc(yolo, "m").to_json())["postprocess"]
    # what uses none of the new keys stays readable by the previous version (its known keys)
    previous = {
        "type",
        "format",
        "score_min",
        "iou",
        "max_detections",
        "outputs",
        "box",
        "normalized",
        "activation",
        "anchors",
        "box_scale",
    }
    assert set(stored) <= previous
    face = {"name": "m", "postprocess": {**SSD, "box_scale": [128] * 4}}
    assert set(orjson.loads(Manifest.from_doc(face, "m").to_json())["postprocess"]) <= previous


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"box_size": "log"},
            "manifest.json: postprocess.box_size = 'log': expected one of "
            "['linear', 'exponential']",
        ),
        (
            {"ignore_classes": [0, -1]},
            "manifest.json: postprocess.ignore_classes = -1: expected an integer in 0..1048576",
        ),
        (
            {"ignore_classes": 0},
            "manifest.json: postprocess.ignore_classes = 0: expected a list of at most 100000 "
            "class indices",
        ),
        (
            {"box": "xyzw"},
            "manifest.json: postprocess.box = 'xyzw': expected one of ['cxcywh', 'cycxhw']",
        ),
        (
            {"ignore_classes": list(range(100_001))},
            "manifest.json: postprocess.ignore_classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "
            "12, 13, 14, 15, 16, 17, 18, 19, 20, 21...: expected a list of at most 100000 "
            "class indices",
        ),
    ],
)
def test_bad_ssd_options_are_refused_naming_the_key(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError) as caught:
        postprocess_from_doc({**SSD, **keys}, "manifest.json")
    assert str(caught.value) == message


def test_box_size_is_refused_beside_another_format_and_the_older_keys_are_ignored() -> None:
    yolo = {"type": "detect", "format": "yolo"}
    with pytest.raises(ModelError) as caught:
        postprocess_from_doc({**yolo, "box_size": "exponential"}, "manifest.json")
    assert str(caught.value) == (
        "manifest.json: postprocess.box_size = 'exponential': format 'yolo' does not read it: "
        "expected it only with format 'ssd_anchors'"
    )
    # what earlier versions accepted and ignored, they still do: box_scale, anchors
    kept = postprocess_from_doc({**yolo, "box_scale": [2, 2, 2, 2], "anchors": ONE_ANCHOR}, "m")
    assert isinstance(kept, DetectSpec) and kept.format == "yolo"


def test_each_regressor_is_divided_by_the_scale_of_its_own_axis() -> None:
    """box_scale is (x, y, w, h) whatever the order: with y first, the first regressor is
    dy and is divided by the y scale."""
    logits = np.array([[[4.0]]])
    raw = np.array([[[0.3, 0.2, 0.4, 0.5]]])  # dy, dx, dh, dw
    decoder = _detector(box="cycxhw", box_size="exponential", box_scale=[2, 3, 4, 5])
    (box, _, _), *_ = decoder.detect({"r": raw, "c": logits}, None)
    cx, cy = 50 + 0.2 / 2 * 50, 50 + 0.3 / 3 * 50
    w, h = math.exp(0.5 / 4) * 50, math.exp(0.4 / 5) * 50
    assert box == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def test_a_box_with_a_nan_or_a_negative_side_is_no_detection() -> None:
    three = {**ONE_ANCHOR, "aspect_ratios": [1.0, 2.0, 0.5]}  # three anchors on one cell
    spec = postprocess_from_doc({**SSD, "anchors": three}, "manifest.json")
    assert isinstance(spec, DetectSpec)
    detector = Detector(spec, ["r", "c"], (100, 100))
    raw = np.array([[[np.nan, 0.0, 1.0, 1.0], [0.0, 0.0, -1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]])
    found = detector.detect({"r": raw, "c": np.array([[[4.0], [5.0], [3.0]]])}, None)
    assert len(found) == 1 and found[0][1] == pytest.approx(1 / (1 + math.exp(-3.0)))


def test_anchor_options_that_would_make_millions_are_refused_before_any_is_made() -> None:
    anchors = {**ONE_ANCHOR, "strides": [1], "input_width": 4000, "input_height": 4000}
    spec = postprocess_from_doc({**SSD, "anchors": anchors}, "manifest.json")
    assert isinstance(spec, DetectSpec)
    with pytest.raises(
        ModelError,
        match=r"make 16000000 anchors for a 4000x4000 input: expected "
        r"at most 1000000",
    ):
        Detector(spec, ["r", "c"], (100, 100))


def test_ignored_classes_beyond_a_yolo_models_labels_are_refused_at_load() -> None:
    spec = postprocess_from_doc(
        {"type": "detect", "format": "yolo", "ignore_classes": [500]}, "manifest.json"
    )
    assert isinstance(spec, DetectSpec)
    detector = Detector(spec, ["y"], (320, 320), classes=2)
    with pytest.raises(
        ModelError,
        match=r"ignore_classes = \[500\]: the model has 2 classes "
        r"\(its labels\): expected indices below 2",
    ):
        detector.check([TensorSpec("y", np.dtype(np.float32), (1, 6, 2100))])
    # decoded boxes with one score each: the scores' length is no class count
    roles = (("boxes", "b"), ("scores", "s"))
    boxes = Detector(
        DetectSpec("boxes", outputs=roles, ignore_classes=(150,)), ["b", "s"], (100, 100)
    )
    boxes.check(
        [
            TensorSpec("b", np.dtype(np.float32), (1, 100, 4)),
            TensorSpec("s", np.dtype(np.float32), (1, 100)),
        ]
    )


def test_ignored_classes_beyond_the_scores_output_are_refused_at_load() -> None:
    detector = _detector(ignore_classes=[0, 30])
    specs = [
        TensorSpec("r", np.dtype(np.float32), (1, 1, 4)),
        TensorSpec("c", np.dtype(np.float32), (1, 1, 24)),
    ]
    message = r"ignore_classes = \[0, 30\]: the model has 24 classes \(scores output \[1, 1, 24\]\)"
    with pytest.raises(ModelError, match=message + r": expected indices below 24"):
        detector.check(specs)


@pytest.mark.parametrize("fmt", ["boxes", "yolo", "ssd_anchors"])
def test_a_detector_manifest_stored_by_the_previous_version_still_loads(fmt: str) -> None:
    """What 19d9a61's postprocess_to_doc wrote: box_scale with every format, box "xyxy"
    (unread) with ssd_anchors; a gateway upgraded in place has these in its store."""
    stored = {
        "type": "detect",
        "format": fmt,
        "score_min": 0.25,
        "iou": 0.45,
        "max_detections": 100,
        "outputs": {"boxes": "r", "scores": "c"} if fmt != "yolo" else {},
        "box": "xyxy",
        "normalized": fmt == "ssd_anchors",
        "activation": "none",
        "box_scale": [1.0, 1.0, 1.0, 1.0],
    }
    if fmt == "ssd_anchors":
        stored |= {"box_scale": [128.0, 128.0, 128.0, 128.0], "anchors": ONE_ANCHOR}
    spec = postprocess_from_doc(stored, "manifest.json")
    assert isinstance(spec, DetectSpec)
    assert spec.box == ("cxcywh" if fmt == "ssd_anchors" else "xyxy")
    # what a user may have written then, and was ignored then: read as it was decoded
    written = postprocess_from_doc({**stored, "box": "yxyx", "box_scale": [2.0] * 4}, "m")
    assert isinstance(written, DetectSpec)
    assert written.box == ("cxcywh" if fmt == "ssd_anchors" else "yxyx")
    assert postprocess_from_doc(orjson.loads(orjson.dumps(postprocess_to_doc(spec))), "") == spec
