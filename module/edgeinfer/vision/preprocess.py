"""``preprocess``: a decoded image into one model input, and the geometry to map back.

Resize modes (to the input's ``width`` x ``height``):

* ``stretch``: the whole image, each axis scaled on its own;
* ``fit``: the whole image scaled to fit, centred on a canvas of ``pad``
  (letterbox), aspect ratio kept;
* ``crop``: the centred region with the input's aspect ratio, scaled to fill it.

Normalisation is ``(pixel * scale - mean) / std`` per channel, computed as one
multiply-add (``pixel * (scale / std) - mean / std``). Integer inputs (a
quantized model served with ``quantized_io = "raw"``) get the values rounded
and clipped to their range; a normalisation that would take pixels 0..255 out of
it is refused when the model loads. :class:`Geometry` maps input pixels back to the
original image's, for boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from edgeinfer.errors import ModelError
from edgeinfer.manifest.vision import MAX_SIDE, PreprocessSpec
from edgeinfer.runtimes.base import Array, TensorSpec

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Geometry:
    """How an original image's pixels map to the input's: ``u = x * sx + ox``."""

    width: int  # the original image's
    height: int
    sx: float
    sy: float
    ox: float
    oy: float

    def to_original(self, boxes: Array) -> Array:
        """``[N, 4]`` xyxy boxes in input pixels as original pixels, clipped to the image."""
        out = np.empty_like(boxes, dtype=np.float64)
        out[:, 0::2] = (boxes[:, 0::2] - self.ox) / self.sx
        out[:, 1::2] = (boxes[:, 1::2] - self.oy) / self.sy
        np.clip(out[:, 0::2], 0, self.width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.height, out=out[:, 1::2])
        return out


class Preprocessor:
    """Fits images to one model input, as its manifest's ``preprocess`` declares."""

    def __init__(self, spec: PreprocessSpec, inputs: tuple[TensorSpec, ...]) -> None:
        """Check ``spec`` against the model's inputs; raises ModelError naming the mismatch."""
        self.spec = spec
        self.input = _the_input(spec, inputs)
        shape = self.input.shape
        if len(shape) != 4:
            raise ModelError(
                f"preprocess: input {self.input.describe()} has rank {len(shape)}: expected "
                "an image input of rank 4 (NHWC or NCHW)"
            )
        self.layout = spec.layout or _layout(self.input)
        h_axis, w_axis, c_axis = (1, 2, 3) if self.layout == "NHWC" else (2, 3, 1)
        for axis, declared, name in (
            (w_axis, spec.resize.width, "width"),
            (h_axis, spec.resize.height, "height"),
        ):
            fixed = _fixed(shape[axis])
            if declared and fixed is not None and declared != fixed:
                raise ModelError(
                    f"preprocess.resize.{name} = {declared}: input {self.input.describe()} "
                    f"({self.layout}) takes a {name} of {fixed}: expected {fixed} or nothing"
                )
        self.width = spec.resize.width or _fixed(shape[w_axis])
        self.height = spec.resize.height or _fixed(shape[h_axis])
        if self.width is None or self.height is None:
            raise ModelError(
                f"preprocess: input {self.input.describe()} has no fixed width and height: "
                "expected preprocess.resize.width and .height"
            )
        if max(self.width, self.height) > MAX_SIDE:
            raise ModelError(
                f"preprocess: input {self.input.describe()} is {self.width}x{self.height}: "
                f"expected sides of at most {MAX_SIDE} pixels"
            )
        channels = 1 if spec.color == "L" else 3
        if _fixed(shape[c_axis]) not in (None, channels):
            raise ModelError(
                f"preprocess: color {spec.color!r} gives {channels} channels but input "
                f"{self.input.describe()} ({self.layout}) takes {shape[c_axis]}: expected "
                "a color with as many channels"
            )
        dtype = np.dtype(spec.dtype) if spec.dtype else self.input.dtype
        if dtype != self.input.dtype:
            raise ModelError(
                f"preprocess.dtype = {spec.dtype!r}: the input {self.input.describe()} takes "
                f"{self.input.dtype}: expected that dtype"
            )
        self.dtype: np.dtype[Any] = dtype
        self._resample = _RESAMPLE[spec.resize.interpolation]
        std = np.asarray(spec.std, np.float32)
        self._mul = (np.float32(spec.scale) / std).astype(np.float32)
        self._add = (-np.asarray(spec.mean, np.float32) / std).astype(np.float32)
        self._identity = bool(np.all(self._mul == 1) and np.all(self._add == 0))
        if dtype.kind in "iu":
            self._check_range(dtype)

    def _check_range(self, dtype: np.dtype[Any]) -> None:
        """Refuse a normalisation that takes pixels 0..255 out of an integer input's range:
        clipped, the image would be washed out (int8 without an offset: every pixel over
        127 the same) and the model would answer nonsense without an error."""
        ends = np.stack([self._add, 255 * self._mul + self._add])
        low, high = float(ends.min()) + 0.0, float(ends.max()) + 0.0  # + 0.0: no "-0"
        info = np.iinfo(dtype)
        if low < info.min - 1 or high > info.max + 1:  # a unit of slack for rounding
            hint = " (pixel - 128: mean 128)" if dtype == np.int8 else ""
            raise ModelError(
                f"preprocess: pixels 0..255 normalised to {low:g}..{high:g} but input "
                f"{self.input.describe()} takes {info.min}..{info.max}: expected "
                f"preprocess.normalize to map them into that range{hint}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """The input's (width, height)."""
        assert self.width is not None and self.height is not None
        return self.width, self.height

    def fit(self, image: Image.Image) -> tuple[Image.Image, Geometry]:
        """Resize (and letterbox or crop) ``image`` to the input's size."""
        w, h = image.size
        width, height = self.size
        mode = self.spec.resize.mode
        if mode == "stretch" or (w, h) == (width, height):
            out = (
                image
                if (w, h) == (width, height)
                else image.resize((width, height), self._resample)
            )
            return out, Geometry(w, h, width / w, height / h, 0.0, 0.0)
        if mode == "fit":
            s = min(width / w, height / h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            left, top = (width - nw) // 2, (height - nh) // 2
            pad = (self.spec.resize.pad,) * (1 if image.mode == "L" else 3)
            canvas = Image.new(image.mode, (width, height), pad if len(pad) > 1 else pad[0])
            canvas.paste(image.resize((nw, nh), self._resample), (left, top))
            return canvas, Geometry(w, h, nw / w, nh / h, float(left), float(top))
        # crop: the centred region with the input's aspect ratio
        if w * height > h * width:
            bw, bh = max(1, round(h * width / height)), h
        else:
            bw, bh = w, max(1, round(w * height / width))
        left, top = (w - bw) // 2, (h - bh) // 2
        out = image.resize((width, height), self._resample, box=(left, top, left + bw, top + bh))
        sx, sy = width / bw, height / bh
        return out, Geometry(w, h, sx, sy, -left * sx, -top * sy)

    def tensor(self, image: Image.Image) -> Array:
        """A fitted image as the input's tensor: colour order, normalisation, layout, dtype."""
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[:, :, np.newaxis]
        if self.spec.color == "BGR":
            pixels = pixels[:, :, ::-1]
        if self._identity and self.dtype.kind in "iu":
            values: Array = pixels
        else:
            values = pixels.astype(np.float32)
            values *= self._mul
            values += self._add
        if self.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        return _cast(np.ascontiguousarray(values[np.newaxis]), self.dtype)

    def __call__(self, image: Image.Image) -> tuple[Array, Geometry]:
        """``image`` as the input's tensor, with the geometry to map boxes back."""
        fitted, geometry = self.fit(image)
        return self.tensor(fitted), geometry


def _the_input(spec: PreprocessSpec, inputs: tuple[TensorSpec, ...]) -> TensorSpec:
    names = [s.name for s in inputs]
    if spec.input is not None:
        for s in inputs:
            if s.name == spec.input:
                return s
        raise ModelError(f"preprocess.input = {spec.input!r}: expected one of the inputs {names}")
    if len(inputs) != 1:
        raise ModelError(
            f"preprocess names no input and the model has {len(inputs)} {names}: expected "
            "preprocess.input"
        )
    return inputs[0]


def _layout(spec: TensorSpec) -> str:
    last, second = _fixed(spec.shape[3]), _fixed(spec.shape[1])
    if last in (1, 3):
        return "NHWC"
    if second in (1, 3):
        return "NCHW"
    raise ModelError(
        f"preprocess: cannot tell the layout of input {spec.describe()}: expected "
        'preprocess.layout "NHWC" or "NCHW"'
    )


def _fixed(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _cast(values: Array, dtype: np.dtype[Any]) -> Array:
    if values.dtype == dtype:
        return values
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)
