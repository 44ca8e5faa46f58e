"""The ``edgeinfer`` command line: one function per command adds its arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction is private

BROKER_HELP = (
    "broker URL (default: [broker] url from --config or EDGEINFER_BROKER_URL, "
    "else mqtt://localhost:1883); TLS and credentials come from the same settings"
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``edgeinfer`` command."""
    parser = argparse.ArgumentParser(
        prog="edgeinfer", description="MQTT edge inference module (ONNX Runtime and TFLite)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _run(sub)
    _deploy(sub)
    _status(sub)
    _fleet(sub)
    _rollout(sub)
    _inspect(sub)
    _bench(sub)
    _quantize(sub)
    _health(sub)
    _simulate(sub)
    _demo(sub)
    return parser


def _run(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run the long-running module")
    run.add_argument("--config", help="TOML config file (also $EDGEINFER_CONFIG)")
    run.add_argument("--broker", help="broker URL, e.g. mqtt://localhost:1883")
    run.add_argument("--model", help="model file (.onnx or .tflite)")
    run.add_argument("--module-id", help="module id used in edgeinfer/{id}/... topics")
    run.add_argument("--state-dir", help="directory of the model store")


def _deploy(sub: Subparsers) -> None:
    deploy = sub.add_parser(
        "deploy",
        help="publish a desired state: a model file (sha256 and size computed, signed with "
        "--sign-key), or without --model a version already in the store",
    )
    deploy.add_argument("--module-id", required=True)
    deploy.add_argument("--model", type=Path, help="the model file to push")
    deploy.add_argument("--version", required=True)
    deploy.add_argument("--name", help="model name (default: its manifest's, else the file's)")
    deploy.add_argument("--url", help="where the module downloads it (default: file:// path)")
    deploy.add_argument(
        "--broker",
        help=BROKER_HELP,
    )
    deploy.add_argument("--config", help="TOML config whose [broker] settings to use")
    deploy.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM)")
    deploy.add_argument("--sequence", type=int, help="default: milliseconds since the epoch")
    deploy.add_argument(
        "--wait",
        action="store_true",
        help="follow the reported state until the update is active (exit 0), or failed or "
        "rolled back (exit 1), showing each step",
    )
    deploy.add_argument(
        "--timeout", type=float, default=300.0, help="with --wait: give up after this (exit 1)"
    )


def _status(sub: Subparsers) -> None:
    status = sub.add_parser(
        "status", help="a module's reported state as tables (model, update, rollout)"
    )
    status.add_argument("--module-id", required=True)
    status.add_argument("--json", action="store_true", help="print the reported document as is")
    status.add_argument(
        "--broker",
        help=BROKER_HELP,
    )
    status.add_argument("--config", help="TOML config whose [broker] settings to use")


def _fleet(sub: Subparsers) -> None:
    fleet = sub.add_parser("fleet", help="every module the broker knows")
    what = fleet.add_subparsers(dest="fleet_command", required=True)
    status = what.add_parser(
        "status", help="one table of every module: online, model, update, rollout, health"
    )
    status.add_argument("--selector", help="only modules with these labels: site=a,line=3")
    status.add_argument("--json", action="store_true", help="a JSON list of objects")
    status.add_argument("--broker", help=BROKER_HELP)
    status.add_argument("--config", help="TOML config whose [broker] settings to use")


def _rollout(sub: Subparsers) -> None:
    roll = sub.add_parser(
        "rollout",
        help="a model across the modules a selector picks, in waves; stops and reverts every "
        "module it touched when too many fail",
    )
    roll.add_argument("--selector", required=True, help="modules with these labels: site=a,hw=pi")
    roll.add_argument("--model", type=Path, required=True, help="the model file to push")
    roll.add_argument("--version", required=True)
    roll.add_argument(
        "--waves",
        required=True,
        help="cumulative wave sizes: counts, or shares of the selected modules with %% "
        "(1,5,25,100%% = 1 module, then 5, then 25, then all)",
    )
    roll.add_argument(
        "--max-failure",
        required=True,
        help="stop when more modules than this fail, roll back or time out: a count (2) or a "
        "share of those finished (10%%)",
    )
    roll.add_argument(
        "--min-done", type=int, default=1, help="judge the failures only once this many finished"
    )
    roll.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM)")
    roll.add_argument("--url", help="where the modules download it (default: file:// path)")
    roll.add_argument(
        "--state",
        type=Path,
        help="the progress file (default: rollout-<name>-<version>.json here)",
    )
    roll.add_argument("--resume", action="store_true", help="go on with the rollout in --state")
    roll.add_argument("--dry-run", action="store_true", help="print the waves; publish nothing")
    roll.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a module may take to report its outcome (default 300)",
    )
    roll.add_argument(
        "--module-rollout",
        help="a rollout block (JSON) in each module's desired state: its own shadow or canary "
        "gates must pass before it counts as done",
    )
    roll.add_argument("--broker", help=BROKER_HELP)
    roll.add_argument("--config", help="TOML config whose [broker] settings to use")


def _inspect(sub: Subparsers) -> None:
    insp = sub.add_parser(
        "inspect",
        help="a model's format, signature, size and sha256; "
        "with --manifest, a manifest ready for the desired state",
    )
    insp.add_argument("model", type=Path, metavar="MODEL")
    insp.add_argument("--manifest", type=Path, help="write a manifest here")
    insp.add_argument("--labels", type=Path, help="class labels: JSON list or one per line")
    insp.add_argument(
        "--sample",
        type=Path,
        help="self-test reading: .json reading, .npy or .npz (default: generated)",
    )
    insp.add_argument("--name", help="model name in the manifest (default: the file's stem)")
    insp.add_argument("--version", default="1.0.0", help="version in the manifest")
    insp.add_argument("--json", action="store_true", help="print one JSON object")


def _bench(sub: Subparsers) -> None:
    bench = sub.add_parser(
        "bench",
        help="latency p50/p95/p99, throughput, peak memory and load "
        "time of one or more models (ONNX and TFLite), side by side",
    )
    bench.add_argument("models", type=Path, nargs="+", metavar="MODEL")
    bench.add_argument("--batch", type=int, default=8, help="batch size for batch throughput")
    bench.add_argument("--runs", type=int, default=200, help="timed single-sample runs")
    bench.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    bench.add_argument("--threads", type=int, default=0, help="runtime threads (0: default)")
    bench.add_argument("--input", type=Path, help=".npz of inputs (default: generated)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")


def _quantize(sub: Subparsers) -> None:
    quant = sub.add_parser(
        "quantize",
        help="INT8 (dynamic/static) or float16 quantization of an ONNX model, validated "
        "against the original. ONNX only: TFLite models are quantized when converted "
        "(TFLiteConverter), so a .tflite is refused",
    )
    quant.add_argument("model", type=Path, metavar="MODEL")
    quant.add_argument(
        "out",
        type=Path,
        metavar="OUT",
        help="the quantized .onnx (a manifest "
        "is written beside it: give each model its own directory)",
    )
    quant.add_argument("--mode", choices=("dynamic", "static", "fp16"), default="dynamic")
    quant.add_argument("--calibration", type=Path, help=".npz of real inputs (static mode)")
    quant.add_argument(
        "--method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="calibration method (static mode)",
    )
    quant.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    quant.add_argument("--eval", type=Path, help=".npz of inputs and 'labels' for accuracy")
    quant.add_argument(
        "--min-accuracy-retention",
        type=float,
        default=0.98,
        help="below this, exit 1 and write nothing (default 0.98)",
    )
    quant.add_argument("--version", help="version in the manifest (default: source + mode)")
    quant.add_argument("--json", action="store_true", help="print one JSON object")


def _health(sub: Subparsers) -> None:
    health = sub.add_parser(
        "health",
        help="exit 0 if the local module answers /healthz "
        "(or /readyz with --ready): for container health checks",
    )
    health.add_argument("--config", help="TOML config (its [http] listen address is used)")
    health.add_argument("--ready", action="store_true", help="check /readyz instead")


def _simulate(sub: Subparsers) -> None:
    sim = sub.add_parser("simulate", help="replay real sensor recordings as MQTT readings")
    sim.add_argument(
        "--broker",
        help=BROKER_HELP,
    )
    sim.add_argument("--config", help="TOML config whose [broker] settings to use")
    sim.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="readings per second (0: unpaced); with --per-sample, samples per second per "
        "device (10: the recordings' own rate)",
    )
    sim.add_argument(
        "--count",
        type=int,
        default=100,
        help="readings to send (0: forever); with --per-sample, samples per device",
    )
    sim.add_argument(
        "--per-sample",
        action="store_true",
        help="one 6-axis sample per message, recordings back to back, devices interleaved "
        "(for a model whose manifest declares a window)",
    )
    sim.add_argument(
        "--camera",
        action="store_true",
        help="publish real photographs as 640x480 JPEG frames (needs the camera extra); "
        "the default topic becomes sensors/{device}/camera",
    )
    sim.add_argument("--topic", default=None, help="topic template (default sensors/{device}/imu)")
    sim.add_argument("--devices", type=int, default=1, help="simulated devices (sim1..simN)")
    sim.add_argument("--qos", type=int, choices=(0, 1), default=1)
    sim.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")


def _demo(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="broker, module, simulator and live results in one")
    demo.add_argument(
        "--duration", type=float, default=10.0, help="seconds of live replay before the burst"
    )
    demo.add_argument("--model", type=Path, help="model to demo (default: the sample ONNX)")
    demo.add_argument(
        "--broker",
        help="broker URL to use (default: the one on localhost:1883, or one the demo starts)",
    )
