"""``edgeinfer simulate --camera``: real photographs published as JPEG frames, as cameras do.

The photographs are the two that ship with scikit-learn
(``sklearn.datasets.load_sample_images``: a temple in China and a flower,
640 x 427, CC BY 2.0); scikit-learn is in the ``camera`` extra. Each frame is a
window panning across one of them, scaled to the frame size (640 x 480 by
default) and encoded as a JPEG: the payload is the JPEG bytes alone, as camera
firmware and Frigate publish them.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import MissingExtraError

FRAMES_PER_PHOTO = 12


def camera_frames(width: int = 640, height: int = 480, quality: int = 85) -> list[bytes]:
    """JPEG frames panning across the bundled photographs."""
    try:
        from sklearn.datasets import load_sample_images  # type: ignore[import-untyped]
    except ImportError as exc:
        raise MissingExtraError("simulate --camera", "camera", "scikit-learn") from exc
    from PIL import Image

    frames = []
    for photo in load_sample_images().images:
        image = Image.fromarray(photo)
        w, h = image.size
        # The largest window with the frame's aspect ratio, panning left to right.
        bw, bh = min(w, round(h * width / height)), min(h, round(w * height / width))
        for n in range(FRAMES_PER_PHOTO):
            left = (w - bw) * n // max(1, FRAMES_PER_PHOTO - 1)
            top = (h - bh) // 2
            frame = image.resize(
                (width, height), Image.Resampling.BILINEAR, box=(left, top, left + bw, top + bh)
            )
            buf = io.BytesIO()
            frame.save(buf, "JPEG", quality=quality)
            frames.append(buf.getvalue())
    return frames


def simulate_camera(
    url: str | BrokerConfig,
    rate: float,
    count: int,
    topic: str = "sensors/{device}/camera",
    devices: int = 1,
    qos: int = 1,
    protocol: str = "5",
) -> int:
    """Publish ``count`` JPEG frames (0: forever) at ``rate`` a second, cameras taking turns."""
    from edgeinfer.tools.simulate import paced

    frames = camera_frames()

    def messages(n: int) -> Iterator[tuple[str, bytes]]:
        yield topic.format(device=f"cam{n % devices + 1}"), frames[n % len(frames)]

    ticks = itertools.count() if count == 0 else range(count)
    return paced(url, protocol, qos, rate, ticks, messages, flush_s=10)
