"""The ``edgeinfer`` command line.

Exit codes: 0 success, 2 bad usage or bad configuration (the message names the
key and the bad value), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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
    deploy.add_argument("--broker", default="mqtt://localhost:1883")
    deploy.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM)")
    deploy.add_argument("--sequence", type=int, help="default: milliseconds since the epoch")

    status = sub.add_parser("status", help="print a module's reported state")
    status.add_argument("--module-id", required=True)
    status.add_argument("--broker", default="mqtt://localhost:1883")

    sim = sub.add_parser("simulate", help="replay real sensor recordings as MQTT readings")
    sim.add_argument("--broker", default="mqtt://localhost:1883")
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
    if args.command == "run":
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
    if args.command == "deploy":
        from edgeinfer.tools.deploy import build_desired, publish_desired

        doc = build_desired(
            args.model, args.version, args.name, args.url, args.sign_key, args.sequence
        )
        publish_desired(args.broker, args.module_id, doc)
        model = doc["model"]
        print(
            f"desired state for {args.module_id}: {model['name']} {model['version']}"
            + (
                f" sha256 {model['sha256'][:12]}... {model['size']} bytes"
                if "url" in model
                else " (stored version)"
            )
            + (", signed" if "signature" in doc else "")
            + f", sequence {doc['sequence']}"
        )
        return 0
    if args.command == "status":
        import orjson

        from edgeinfer.tools.deploy import read_reported

        print(
            orjson.dumps(
                read_reported(args.broker, args.module_id), option=orjson.OPT_INDENT_2
            ).decode()
        )
        return 0
    if args.command == "simulate":
        from edgeinfer.tools.simulate import simulate

        if args.rate < 0 or args.count < 0 or args.devices < 1:
            raise ConfigError(
                "--rate/--count/--devices",
                (args.rate, args.count, args.devices),
                "rate >= 0, count >= 0, devices >= 1",
            )
        sent = simulate(
            args.broker,
            args.rate,
            args.count,
            args.topic,
            args.devices,
            args.qos,
            protocol=args.protocol,
        )
        print(f"sent {sent} readings to {args.broker}")
        return 0
    if args.command == "demo":
        from edgeinfer.tools.demo import run_demo

        return run_demo(args.duration, args.model)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
