"""A heavy real vision model, binary readings in a burst: edgeinfer vs the naive peer vs
the runtime alone at its best batch size, one run, one table.

The model is PaddleOCR's text-direction classifier as RapidOCR ships it
(``ch_ppocr_mobile_v2.0_cls_infer.onnx``, a 0.6 MB conv net, input
``x: [?, 3, 48, 192]``), fetched from the package registry into the test cache
(``tests/compat/fetch.py``; never committed). Readings are single crops as .npy
bytes (110 KB each), published by a paho process of their own; answers are
counted by ``mosquitto_sub``. In interleaved rounds:

* ``runtime``: ONNX Runtime alone, no MQTT, at batch sizes 1..64 with its
  worker threads spinning (its default) and not; its best is the ceiling;
* ``naive``: one ``session.run`` per message in paho's callback;
* ``edgeinfer``: the module with its defaults.

``--profile`` samples edgeinfer with py-spy during one more burst and prints
where its time goes.

    python benchmarks/bench_vision.py [--burst 3000] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from tests.compat.fetch import model_file  # noqa: E402

from bench_pipeline import Contender  # noqa: E402
from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from loadgen import BinaryLoad  # noqa: E402

PACKAGE = "rapidocr-onnxruntime"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
BATCHES = (1, 4, 8, 16, 32, 64)


def crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """Text-line crops as the classifier takes them (normalised to [-1, 1])."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (3, 48, 192)).astype(np.float32) for _ in range(count)]


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def runtime_alone(model: Path, images: list[np.ndarray], seconds: float = 1.5) -> dict[str, float]:
    """Samples a second by batch size and thread spinning (ONNX Runtime's default is on;
    on a small shared machine off is often faster): the runtime at its best."""
    import onnxruntime as ort

    rates = {}
    for spinning in ("1", "0"):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch in BATCHES:
            x = np.stack([images[i % len(images)] for i in range(batch)])
            session.run(None, {name: x})
            runs, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds:
                session.run(None, {name: x})
                runs += 1
            rates[f"batch {batch}, spinning {'on' if spinning == '1' else 'off'}"] = (
                runs * batch / elapsed
            )
    return rates


def profile(broker: LocalBroker, load: BinaryLoad, model: Path, count: int) -> None:
    """Where edgeinfer's time goes during a burst: py-spy samples, by thread and stage."""
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy_bin).exists():
        print("\n--profile needs py-spy (pip install py-spy)")
        return
    contender = Contender("edgeinfer", broker, model)
    try:
        load.burst(100)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "profile.txt"
            spy = subprocess.Popen(
                [
                    spy_bin,
                    "record",
                    "-p",
                    str(contender.pid),
                    "-o",
                    str(raw),
                    "-f",
                    "raw",
                    "-r",
                    "200",
                    "--threads",
                    "--idle",
                    "-d",
                    "8",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            load.burst(count)
            spy.wait()
            kept = ROOT / "benchmarks" / "results" / "vision-profile.txt"
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(raw, kept)  # the raw stacks, for a closer look
            print_profile(raw.read_text())
    finally:
        contender.stop()


STAGES = (  # the first match from the innermost frame outwards names the stage
    ("model run (ONNX Runtime)", ("Session.run",)),
    ("decode .npy", ("load_npy", "Decoder.decode")),
    ("stack batch", ("_stack", "concatenate")),
    ("split, encode", ("encode_result", "split_rows", "non_finite_rows", "_split")),
    ("publish", ("Responder.", "Outbox.", "MqttConnection.publish")),
    ("acks, PUBACKs", ("_handle_pubackcomp", "AckTracker", "Client.ack")),
    ("waiting", ("select", "Condition.wait", "Event.wait", "Queue.get")),
    ("receive (paho)", ("loop_read", "_packet_read", "_handle_publish", "_on_message", "submit")),
    ("send (paho)", ("loop_write", "_packet_write")),
)


def print_profile(raw: str) -> None:
    by_thread: collections.Counter[str] = collections.Counter()
    by_stage: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip()
        if thread != "serving":
            continue  # the one thread that receives, runs the model and publishes
        stage = "other"
        if frames[-1].startswith("ServingLoop._turn"):
            stage = "waiting"  # in select(): py-spy shows no frame for the builtin
        for label, keys in () if stage != "other" else STAGES:
            if any(key in frame for frame in reversed(frames) for key in keys):
                stage = label
                break
        by_thread[thread] += int(count)
        by_stage[thread][stage] += int(count)
    print("\nwhere edgeinfer's serving thread spends a burst (py-spy, share of its samples)")
    for thread, total in by_thread.items():
        print(f"  {thread}:")
        for stage, n in by_stage[thread].most_common():
            print(f"    {n / total * 100:5.1f}%  {stage}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    model = model_file(PACKAGE, MEMBER)
    images = crops(32)
    results: dict[str, list[float]] = collections.defaultdict(list)
    best_batch: list[str] = []
    broker = LocalBroker(kind="mosquitto", persistence=False)
    with broker, tempfile.TemporaryDirectory() as tmp:
        load = BinaryLoad(broker.port, [npy(x) for x in images], Path(tmp))
        for rnd in range(args.rounds):
            rates = runtime_alone(model, images)
            best = max(rates, key=lambda b: rates[b])
            best_batch.append(best)
            results["runtime alone (best batch)"].append(rates[best])
            results["runtime alone (batch 1)"].append(
                max(rates["batch 1, spinning on"], rates["batch 1, spinning off"])
            )
            table = ", ".join(f"{b}: {r:.0f}" for b, r in rates.items())
            print(f"round {rnd + 1} runtime alone, samples/s by {table}", flush=True)
            for name in ("naive", "edgeinfer"):
                contender = Contender(name, broker, model)
                try:
                    load.burst(100)  # warm-up
                    burst = load.burst(args.burst)
                finally:
                    contender.stop()
                results[name].append(burst.throughput)
                print(f"round {rnd + 1} {name:<10} {burst.throughput:7.0f}/s  lost {burst.lost}")
                if burst.lost:
                    print(f"  {name} lost {burst.lost} readings", file=sys.stderr)
        if args.profile:
            profile(broker, load, model, args.burst)
    return report(args, results, best_batch)


def report(args: argparse.Namespace, results: dict[str, list[float]], best: list[str]) -> int:
    med = {name: statistics.median(values) for name, values in results.items()}
    print(f"\nmedians of {args.rounds} rounds; burst of {args.burst} .npy readings (110 KB)")
    for name, value in med.items():
        print(f"  {name:<28} {value:7.0f} samples/s")
    e = med["edgeinfer"]
    targets = [
        ("edgeinfer >= 1.6x the naive peer", e / med["naive"], 1.6),
        (
            "edgeinfer >= 0.5x the runtime alone at its best batch",
            e / med["runtime alone (best batch)"],
            0.5,
        ),
    ]
    missed = 0
    for label, ratio, need in targets:
        missed += ratio < need
        print(f"  [{'met   ' if ratio >= need else 'MISSED'}] {label} ({ratio:.2f})")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    doc: dict[str, Any] = {"medians": med, "raw": results, "best_batch": best}
    (out / "vision.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
