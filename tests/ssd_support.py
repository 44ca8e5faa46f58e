"""A published SSD detector with TensorFlow Object Detection API outputs, and its reference.

MediaPipe Objectron's web package (npm ``@mediapipe/objectron``) carries, in its
packed assets, ``object_detection_ssd_mobilenetv2_oidv4_fp16.tflite``: an SSD
MobileNetV2 trained on 24 Open Images classes whose outputs are the raw box
encodings ``[1, 1917, 4]`` (``ty, tx, th, tw``: y first, sizes as logarithms)
and class logits ``[1, 1917, 24]`` (class 0 the background). MediaPipe decodes
them with its graph ``object_detection_oid_v4_cpu.pbtxt``: a 300x300 stretch,
``SsdAnchorsCalculator`` (6 layers, scales 0.2..0.95, strides 16..512, aspect
ratios 1, 2, 0.5, 3, 1/3, reduced lowest layer), then
``TensorsToDetectionsCalculator`` (``ignore_classes: 0``, sigmoid,
``apply_exponential_on_box_size``, scales 10, 10, 5, 5). :data:`OIDV4` declares
the same in a manifest.

The reference here decodes as the Object Detection API documents it, apart
from the module's code: anchors as its ``MultipleGridAnchorGenerator`` lays
them out for SSD (``create_ssd_anchors``), boxes through its
``FasterRcnnBoxCoder``, a sigmoid, the background skipped, per-class NMS.
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.compat.fetch import CACHE, NPM_PACKAGES, npm_file, write_atomically
from tests.vision_support import Found, decoded, reference_nms

PACKAGE = "@mediapipe/objectron"
MODEL = "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite"
SIDE = 300


def _asset(name: str) -> bytes:
    """One file of the package's packed assets, located by its loader's file table."""
    loader = npm_file(PACKAGE, "package/objectron_solution_packed_assets_loader.js").read_text()
    table = re.findall(r'"filename": "([^"]+)", "start": (\d+), "end": (\d+)', loader)
    spans = {Path(f).name: (int(a), int(b)) for f, a, b in table}
    start, end = spans[name]
    with npm_file(PACKAGE, "package/objectron_solution_packed_assets.data").open("rb") as data:
        data.seek(start)
        return data.read(end - start)


def oidv4_model() -> Path:
    """The detector, cut out of the packed assets once into the test cache."""
    target = CACHE / "npm" / f"objectron-{NPM_PACKAGES[PACKAGE]}-{MODEL}"
    if not target.exists():
        write_atomically(target, _asset(MODEL))
    return target


@cache
def oidv4_labels() -> list[str]:
    """Its 24 labels, ``???`` (the background) first."""
    return _asset("object_detection_oidv4_labelmap.txt").decode().split("\n")[:24]


def oidv4_manifest() -> dict[str, Any]:
    """MediaPipe's decoding of the detector, declared in a manifest."""
    return {
        "labels": oidv4_labels(),
        "preprocess": {
            "resize": {"mode": "stretch"},
            "normalize": {"scale": 1 / 127.5, "mean": 1.0},
        },
        "postprocess": {
            "type": "detect",
            "format": "ssd_anchors",
            "score_min": 0.4,
            "iou": 0.4,
            "outputs": {
                "boxes": "raw_outputs/box_encodings",
                "scores": "raw_outputs/class_predictions",
            },
            "box": "cycxhw",
            "box_size": "exponential",
            "box_scale": [10, 10, 5, 5],
            "ignore_classes": [0],
            "anchors": {
                "num_layers": 6,
                "min_scale": 0.2,
                "max_scale": 0.95,
                "strides": [16, 32, 64, 128, 256, 512],
                "aspect_ratios": [1.0, 2.0, 0.5, 3.0, 0.3333],
                "reduce_boxes_in_lowest_layer": True,
            },
        },
    }


def tf_ssd_anchors() -> np.ndarray:
    """``[1917, 4]`` anchors (ycenter, xcenter, height, width) as the Object Detection
    API's ``create_ssd_anchors(num_layers=6, min_scale=0.2, max_scale=0.95,
    aspect_ratios=(1, 2, .5, 3, .3333), reduce_boxes_in_lowest_layer=True)`` makes them
    for a 300x300 input: grids 19, 10, 5, 3, 2, 1; per cell, in order, the layer's
    (scale, ratio) pairs; height scale/sqrt(ratio), width scale*sqrt(ratio)."""
    scales = [0.2 + (0.95 - 0.2) * i / 5 for i in range(6)] + [1.0]
    ratios = (1.0, 2.0, 0.5, 3.0, 0.3333)
    out = []
    for layer, grid in enumerate((19, 10, 5, 3, 2, 1)):
        if layer == 0:
            pairs = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            pairs = [(scales[layer], r) for r in ratios]
            pairs.append((math.sqrt(scales[layer] * scales[layer + 1]), 1.0))
        for y in range(grid):
            for x in range(grid):
                for scale, ratio in pairs:
                    root = math.sqrt(ratio)
                    out.append(((y + 0.5) / grid, (x + 0.5) / grid, scale / root, scale * root))
    return np.asarray(out, np.float64)


def oidv4_reference(path: Path, payload: bytes) -> Found:
    """The detector's boxes for a JPEG, decoded as the Object Detection API does."""
    from ai_edge_litert.interpreter import Interpreter

    image = decoded(payload)
    pixels = np.asarray(image.resize((SIDE, SIDE), Image.BILINEAR), np.float32)
    interp = Interpreter(str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], pixels[np.newaxis] / 127.5 - 1)
    interp.invoke()
    out = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    codes = out["raw_outputs/box_encodings"][0].astype(np.float64)
    logits = out["raw_outputs/class_predictions"][0].astype(np.float64)
    anchors = tf_ssd_anchors()
    ya, xa, ha, wa = anchors.T
    ty, tx, th, tw = codes[:, 0] / 10, codes[:, 1] / 10, codes[:, 2] / 5, codes[:, 3] / 5
    yc, xc, h, w = ty * ha + ya, tx * wa + xa, np.exp(th) * ha, np.exp(tw) * wa
    width, height = image.size
    boxes = np.stack(
        [(xc - w / 2) * width, (yc - h / 2) * height, (xc + w / 2) * width, (yc + h / 2) * height],
        axis=1,
    )
    probabilities = 1 / (1 + np.exp(-logits[:, 1:]))  # the background class never reported
    classes = probabilities.argmax(axis=1) + 1
    scores = probabilities.max(axis=1)
    found = reference_nms(boxes, scores, classes, 0.4, 0.4)
    return [
        ([min(max(v, 0.0), width if n % 2 == 0 else height) for n, v in enumerate(box)], s, c)
        for box, s, c in found
    ]
