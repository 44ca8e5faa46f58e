"""What each ``edgeinfer`` command does; heavy imports happen inside, so ``--help`` is fast."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Callable

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import ConfigError

log = logging.getLogger("edgeinfer")


def run(args: argparse.Namespace) -> int:
    from edgeinfer.app import run_module
    from edgeinfer.config import load_config
    from edgeinfer.observability.logs import configure_logging

    warnings: list[str] = []
    config = load_config(
        args.config,
        overrides={
            "broker.url": args.broker,
            "model.path": args.model,
            "module.id": args.module_id,
            "module.state_dir": args.state_dir,
        },
        warnings=warnings,
    )
    configure_logging(config.log.level, config.log.format)
    for warning in warnings:
        log.warning("%s", warning)
    return run_module(config)


def deploy(args: argparse.Namespace) -> int:
    from edgeinfer.tools.deploy import build_desired, follow_update, publish_desired

    doc = build_desired(
        args.model,
        args.version,
        args.name,
        args.url,
        args.sign_key,
        args.sequence,
        module_id=args.module_id,
    )
    model = doc["model"]
    what = (
        f" sha256 {model['sha256'][:12]}... {model['size']} bytes"
        if "url" in model
        else " (stored version)"
    )
    signed = ", signed" if "signature" in doc else ""

    def publish() -> None:
        publish_desired(broker_settings(args), args.module_id, doc)
        print(
            f"desired state for {args.module_id}: {model['name']} {model['version']}{what}"
            f"{signed}, sequence {doc['sequence']}",
            flush=True,
        )

    if not args.wait:
        publish()
        return 0
    from rich.console import Console

    from edgeinfer.tools.progress import progress

    # Published once the follower is subscribed: no early step goes unseen.
    follow = functools.partial(
        follow_update,
        broker_settings(args),
        args.module_id,
        model["name"],
        model["version"],
        time.time(),
        args.timeout,
        start=publish,
    )
    console = Console(stderr=True)
    if console.is_terminal:  # a bar for the download and the steps, then the outcome
        last = [""]
        with progress(1.0, console) as steps:

            def shown(step: str, done: float | None) -> None:
                last[0] = step
                steps.update(step.strip(), done)

            final = follow(shown)
        print(last[0] or f"  {final}")
    else:  # a pipe or a log: one line a step
        final = follow(lambda step, done: print(step, flush=True))
    if final == "timeout":
        print(f"edgeinfer: no final state within {args.timeout:g} s", file=sys.stderr)
    return 0 if final == "active" else 1


def status(args: argparse.Namespace) -> int:
    import orjson

    from edgeinfer.tools.deploy import read_reported
    from edgeinfer.tools.status_view import render

    doc = read_reported(broker_settings(args), args.module_id)
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() if args.json else render(doc))
    return 0


def fleet(args: argparse.Namespace) -> int:
    import orjson

    from edgeinfer.tools.fleet import status as view

    selector = view.parse_selector(args.selector)
    modules = view.select(view.collect(broker_settings(args)), selector)
    if args.json:
        print(orjson.dumps(modules, option=orjson.OPT_INDENT_2).decode())
    else:
        print(view.table(modules))
    return 0


def rollout(args: argparse.Namespace) -> int:
    import orjson

    from edgeinfer.tools.fleet import status as view
    from edgeinfer.tools.fleet.rollout import RolloutOptions, run_rollout

    block = None
    if args.module_rollout:
        try:
            block = orjson.loads(args.module_rollout)
        except orjson.JSONDecodeError as exc:
            raise ConfigError("--module-rollout", args.module_rollout, f"JSON ({exc})") from None
        if not isinstance(block, dict):
            raise ConfigError("--module-rollout", args.module_rollout, "a JSON object")
    if args.min_done < 0 or args.timeout <= 0:
        raise ConfigError(
            "--min-done/--timeout", (args.min_done, args.timeout), "min-done >= 0, timeout > 0"
        )
    options = RolloutOptions(
        selector=view.parse_selector(args.selector),
        model=args.model,
        version=args.version,
        waves=args.waves,
        max_failure=args.max_failure,
        min_done=args.min_done,
        sign_key=args.sign_key,
        state_file=args.state,
        resume=args.resume,
        dry_run=args.dry_run,
        url=args.url,
        timeout_s=args.timeout,
        module_rollout=block,
    )
    return run_rollout(broker_settings(args), options)


def simulate(args: argparse.Namespace) -> int:
    from edgeinfer.tools.simulate import simulate, simulate_samples

    if args.rate < 0 or args.count < 0 or args.devices < 1:
        raise ConfigError(
            "--rate/--count/--devices",
            (args.rate, args.count, args.devices),
            "rate >= 0, count >= 0, devices >= 1",
        )
    broker = broker_settings(args)
    if args.camera:
        from edgeinfer.tools.camera import simulate_camera

        topic = args.topic or "sensors/{device}/camera"
        sent = simulate_camera(
            broker, args.rate, args.count, topic, args.devices, args.qos, args.protocol
        )
        print(f"sent {sent} JPEG frames to {broker.url}")
        return 0
    args.topic = args.topic or "sensors/{device}/imu"
    if args.per_sample:
        sent = simulate_samples(
            broker, args.rate, args.count, args.topic, args.devices, args.qos, args.protocol
        )
        print(f"sent {sent} samples to {broker.url}")
        return 0
    sent = simulate(
        broker, args.rate, args.count, args.topic, args.devices, args.qos, protocol=args.protocol
    )
    print(f"sent {sent} readings to {broker.url}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from edgeinfer.tools.demo import run_demo

    return run_demo(args.duration, args.model, args.broker)


def broker_settings(args: argparse.Namespace) -> BrokerConfig:
    """[broker] settings as the module resolves them, with --broker over the URL."""
    from edgeinfer.config import load_config

    return load_config(args.config, overrides={"broker.url": args.broker}).broker


def health(args: argparse.Namespace) -> int:
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


def _show(args: argparse.Namespace, doc: object, text: str) -> None:
    import orjson

    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() if args.json else text)


def inspect(args: argparse.Namespace) -> int:
    from edgeinfer.tools.modelinfo import (
        build_manifest,
        describe,
        open_model,
        read_labels,
        sample_reading,
    )

    info = describe(args.model, args.sample)
    _show(args, info.as_dict(), info.text())
    if args.manifest:
        import orjson

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


def bench(args: argparse.Namespace) -> int:
    from edgeinfer.tools.modelbench import bench_models, results_json, results_table
    from edgeinfer.tools.progress import progress

    with progress(1.0) as steps:

        def on_round(done: int, total: int) -> None:
            steps.update(f"timed runs: {done} of {total} model rounds", done / total)

        steps.update("loading and warming up", 0.0)
        results = bench_models(
            args.models, args.batch, args.runs, args.warmup, args.threads, args.input, on_round
        )
    _show(args, results_json(results), results_table(results))
    return 0


def quantize(args: argparse.Namespace) -> int:
    from edgeinfer.tools.progress import progress
    from edgeinfer.tools.quantize import quantize as run_quantize
    from edgeinfer.tools.quantize import report_json

    with progress(None) as steps:
        report = run_quantize(
            args.model,
            args.out,
            args.mode,
            args.calibration,
            args.eval,
            args.min_accuracy_retention,
            args.method,
            args.per_channel,
            args.version,
            on_step=steps.update,
        )
    written = f"\nwritten: {args.out} and {args.out.parent / 'manifest.json'}"
    _show(args, report_json(report), report.text() + written)
    return 0


#: Every command, by the name it is typed as.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run,
    "deploy": deploy,
    "status": status,
    "fleet": fleet,
    "rollout": rollout,
    "health": health,
    "simulate": simulate,
    "demo": demo,
    "inspect": inspect,
    "bench": bench,
    "quantize": quantize,
}
