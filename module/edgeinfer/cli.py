"""The ``edgeinfer`` command line.

Exit codes: 0 success, 2 bad usage or bad configuration (the message names the
key and the bad value), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import ConfigError, EdgeInferError

log = logging.getLogger("edgeinfer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeinfer", description="MQTT edge inference module (ONNX Runtime and TFLite)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the long-running module")
    run.add_argument("--config", help="TOML config file (also $EDGEINFER_CONFIG)")
    run.add_argument("--broker", help="broker URL, e.g. mqtt://localhost:1883")
    run.add_argument("--model", help="model file (.onnx or .tflite)")
    run.add_argument("--module-id", help="module id used in edgeinfer/{id}/... topics")
    run.add_argument("--state-dir", help="directory of the model store")

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
        help="broker URL (default: [broker] url from --config or EDGEINFER_BROKER_URL, "
        "else mqtt://localhost:1883); TLS and credentials come from the same settings",
    )
    deploy.add_argument("--config", help="TOML config whose [broker] settings to use")
    deploy.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM)")
    deploy.add_argument("--sequence", type=int, help="default: milliseconds since the epoch")

    status = sub.add_parser("status", help="print a module's reported state")
    status.add_argument("--module-id", required=True)
    status.add_argument(
        "--broker",
        help="broker URL (default: [broker] url from --config or EDGEINFER_BROKER_URL, "
        "else mqtt://localhost:1883); TLS and credentials come from the same settings",
    )
    status.add_argument("--config", help="TOML config whose [broker] settings to use")

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

    health = sub.add_parser(
        "health",
        help="exit 0 if the local module answers /healthz "
        "(or /readyz with --ready): for container health checks",
    )
    health.add_argument("--config", help="TOML config (its [http] listen address is used)")
    health.add_argument("--ready", action="store_true", help="check /readyz instead")

    sim = sub.add_parser("simulate", help="replay real sensor recordings as MQTT readings")
    sim.add_argument(
        "--broker",
        help="broker URL (default: [broker] url from --config or EDGEINFER_BROKER_URL, "
        "else mqtt://localhost:1883); TLS and credentials come from the same settings",
    )
    sim.add_argument("--config", help="TOML config whose [broker] settings to use")
    sim.add_argument("--rate", type=float, default=10.0, help="readings per second (0: unpaced)")
    sim.add_argument("--count", type=int, default=100, help="readings to send (0: forever)")
    sim.add_argument("--topic", default="sensors/{device}/imu")
    sim.add_argument("--devices", type=int, default=1, help="simulated devices (sim1..simN)")
    sim.add_argument("--qos", type=int, choices=(0, 1), default=1)
    sim.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")

    demo = sub.add_parser("demo", help="broker, module, simulator and live results in one")
    demo.add_argument(
        "--duration", type=float, default=10.0, help="seconds of live replay before the burst"
    )
    demo.add_argument("--model", type=Path, help="model to demo (default: the sample ONNX)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"edgeinfer: bad configuration: {exc}", file=sys.stderr)
        return 2
    except EdgeInferError as exc:
        print(f"edgeinfer: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run, "deploy": _deploy, "status": _status, "health": _health,
        "simulate": _simulate, "demo": _demo,
        "inspect": _model_tool, "bench": _model_tool, "quantize": _model_tool,
    }  # fmt: skip
    return handlers[args.command](args)


def _run(args: argparse.Namespace) -> int:
    from edgeinfer.app import run_module
    from edgeinfer.config import load_config
    from edgeinfer.observability.logs import configure_logging

    config = load_config(
        args.config,
        overrides={
            "broker.url": args.broker,
            "model.path": args.model,
            "module.id": args.module_id,
            "module.state_dir": args.state_dir,
        },
    )
    configure_logging(config.log.level, config.log.format)
    return run_module(config)


def _deploy(args: argparse.Namespace) -> int:
    from edgeinfer.tools.deploy import build_desired, publish_desired

    doc = build_desired(args.model, args.version, args.name, args.url, args.sign_key, args.sequence)
    publish_desired(_broker(args), args.module_id, doc)
    model = doc["model"]
    what = (
        f" sha256 {model['sha256'][:12]}... {model['size']} bytes"
        if "url" in model
        else " (stored version)"
    )
    signed = ", signed" if "signature" in doc else ""
    print(
        f"desired state for {args.module_id}: {model['name']} {model['version']}{what}"
        f"{signed}, sequence {doc['sequence']}"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    import orjson

    from edgeinfer.tools.deploy import read_reported

    doc = read_reported(_broker(args), args.module_id)
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from edgeinfer.tools.simulate import simulate

    if args.rate < 0 or args.count < 0 or args.devices < 1:
        raise ConfigError(
            "--rate/--count/--devices",
            (args.rate, args.count, args.devices),
            "rate >= 0, count >= 0, devices >= 1",
        )
    broker = _broker(args)
    sent = simulate(
        broker, args.rate, args.count, args.topic, args.devices, args.qos, protocol=args.protocol
    )
    print(f"sent {sent} readings to {broker.url}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edgeinfer.tools.demo import run_demo

    return run_demo(args.duration, args.model)


def _broker(args: argparse.Namespace) -> BrokerConfig:
    """[broker] settings as the module resolves them, with --broker over the URL."""
    from edgeinfer.config import load_config

    return load_config(args.config, overrides={"broker.url": args.broker}).broker


def _health(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from edgeinfer.config import load_config

    config = load_config(args.config)
    if not config.http.listen:
        raise ConfigError("http.listen", "", "an address: the health endpoint is disabled")
    host, port = config.http.address
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{host}:{port}/{'readyz' if args.ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(), file=sys.stderr)
    except OSError as exc:
        print(f"edgeinfer: {url} does not answer: {exc}", file=sys.stderr)
    return 1


def _model_tool(args: argparse.Namespace) -> int:
    import orjson

    def show(doc: object, text: str) -> None:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() if args.json else text)

    if args.command == "inspect":
        from edgeinfer.tools.modelinfo import (
            build_manifest,
            describe,
            open_model,
            read_labels,
            sample_reading,
        )

        info = describe(args.model)
        show(info.as_dict(), info.text())
        if args.manifest:
            labels = read_labels(args.labels) if args.labels else []
            model, _ = open_model(args.model)
            reading = sample_reading(model, args.sample)
            model.close()
            manifest = build_manifest(
                args.model, args.name or args.model.stem, args.version, labels, reading
            )
            args.manifest.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            if not args.json:
                print(f"manifest written to {args.manifest}")
        return 0
    if args.command == "bench":
        from edgeinfer.tools.modelbench import bench_models, results_json, results_table

        results = bench_models(
            args.models, args.batch, args.runs, args.warmup, args.threads, args.input
        )
        show(results_json(results), results_table(results))
        return 0
    from edgeinfer.tools.quantize import quantize, report_json

    report = quantize(
        args.model,
        args.out,
        args.mode,
        args.calibration,
        args.eval,
        args.min_accuracy_retention,
        args.method,
        args.per_channel,
        args.version,
    )
    show(
        report_json(report),
        report.text() + f"\nwritten: {args.out} and {args.out.parent / 'manifest.json'}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
