"""SSD anchors as MediaPipe's ``SsdAnchorsCalculator`` generates them.

MediaPipe's detectors (the BlazeFace face detectors among them) output box
offsets relative to a fixed grid of anchors that is not stored in the model:
it is generated from the calculator's options at start-up. The manifest
declares those options (``postprocess.anchors``); this is the same algorithm,
so the anchors match MediaPipe's, in the same order.
"""

from __future__ import annotations

import math

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.manifest.postprocess import MAX_ANCHORS, AnchorSpec
from edgeinfer.runtimes.base import Array


def _scale(low: float, high: float, index: int, layers: int) -> float:
    if layers == 1:
        return (low + high) / 2
    return low + (high - low) * index / (layers - 1)


Shape = tuple[float, float]


def _layer_shapes(spec: AnchorSpec, first: int, last: int) -> list[Shape]:
    """(width, height) of each anchor of the layers ``first..last-1`` that share a stride."""
    ratios: list[float] = []
    scales: list[float] = []
    for layer in range(first, last):
        scale = _scale(spec.min_scale, spec.max_scale, layer, len(spec.strides))
        if layer == 0 and spec.reduce_boxes_in_lowest_layer:
            ratios += [1.0, 2.0, 0.5]
            scales += [0.1, scale, scale]
            continue
        for ratio in spec.aspect_ratios:
            ratios.append(ratio)
            scales.append(scale)
        if spec.interpolated_scale_aspect_ratio > 0:
            following = (
                1.0
                if layer == len(spec.strides) - 1
                else _scale(spec.min_scale, spec.max_scale, layer + 1, len(spec.strides))
            )
            scales.append(math.sqrt(scale * following))
            ratios.append(spec.interpolated_scale_aspect_ratio)
    return [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios, strict=True)]


def _layers(spec: AnchorSpec, width: int, height: int) -> list[tuple[int, int, list[Shape]]]:
    """Per run of layers sharing a stride: its grid's rows and columns and its anchor shapes."""
    runs = []
    layer = 0
    while layer < spec.num_layers:
        last = layer
        while last < len(spec.strides) and spec.strides[last] == spec.strides[layer]:
            last += 1
        stride = spec.strides[layer]
        shapes = _layer_shapes(spec, layer, last)
        runs.append((math.ceil(height / stride), math.ceil(width / stride), shapes))
        layer = last
    return runs


def ssd_anchors(spec: AnchorSpec, width: int, height: int) -> Array:
    """``[N, 4]`` anchors (x centre, y centre, width, height), in 0..1 of the input.

    ``width`` and ``height`` are the input's, unless the options name their own. Options
    that would make more than MAX_ANCHORS are refused (ModelError) before any is made.
    """
    width = spec.input_width or width
    height = spec.input_height or height
    runs = _layers(spec, width, height)
    total = sum(rows * cols * len(shapes) for rows, cols, shapes in runs)
    if total > MAX_ANCHORS:
        raise ModelError(
            f"postprocess.anchors make {total} anchors for a {width}x{height} input: expected "
            f"at most {MAX_ANCHORS} (check strides and input_width/input_height)"
        )
    anchors: list[tuple[float, float, float, float]] = []
    for rows, cols, shapes in runs:
        for y in range(rows):
            for x in range(cols):
                cx = (x + spec.anchor_offset_x) / cols
                cy = (y + spec.anchor_offset_y) / rows
                for w, h in shapes:
                    anchors.append((cx, cy, 1.0, 1.0) if spec.fixed_anchor_size else (cx, cy, w, h))
    return np.asarray(anchors, np.float32).reshape(-1, 4)
