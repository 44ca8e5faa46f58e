"""``edgeinfer bench``: latency percentiles, throughput, memory and load time of models.

Each model runs in a worker process of its own, so its peak resident memory is
its own. Timed runs are interleaved across models in rounds (the order rotated
each round), so a noisy machine does not favour whichever model ran first.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ConfigError, EdgeInferError, ModelError
from edgeinfer.runtimes.axes import infer_batch_axes
from edgeinfer.runtimes.base import Array, Model
from edgeinfer.tools.inputs import DYNAMIC_DIM, generate_inputs, load_npz, take_rows

ROUNDS = 5


@dataclass(frozen=True)
class BenchResult:
    """One model's figures; latencies in milliseconds, throughputs per second."""

    model: str
    format: str
    runtime: str
    load_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # single samples, one after another
    batch: int
    batch_throughput: float | None  # samples per second in batches; None if not batchable
    peak_rss_mb: float
    runs: int


def time_runs(model: Model, feeds: dict[str, Array], runs: int) -> list[float]:
    """Seconds per ``model.run`` over ``runs`` calls."""
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run(feeds)
        out.append(time.perf_counter() - started)
    return out


def sample_feeds(
    model: Model, input_file: Path | None, batch: int
) -> tuple[dict[str, Array], dict[str, Array]]:
    """(one sample, one batch) from ``--input`` or generated from the signature."""
    axes = infer_batch_axes(model.inputs, model.outputs).inputs
    if input_file is None:
        return (
            generate_inputs(model.inputs, 1, axes=axes),
            generate_inputs(model.inputs, batch, seed=1, axes=axes),
        )
    feeds, _ = load_npz(input_file, model.inputs, "--input", axes=axes)
    single = take_rows(feeds, 0, 1, axes)
    rows = next((feeds[n].shape[a] for n, a in axes.items() if a is not None), 1)
    picks = [i % rows for i in range(batch)]
    batched = {
        k: v if axes.get(k) is None else np.take(v, picks, axis=axes[k]) for k, v in feeds.items()
    }
    return single, batched


def _generated_input_refused(feeds: dict[str, Array], exc: ModelError) -> ConfigError:
    """A model that will not run on made-up inputs (a detector whose image sides must be
    multiples of 32, say) needs a real reading: say so, and what was made up."""
    shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in feeds.items())
    return ConfigError(
        "--input",
        None,
        f"a reading the model takes (.npz): it failed on generated inputs ({shapes}; "
        f"dynamic dimensions other than the batch set to {DYNAMIC_DIM}): "
        + " ".join(str(exc).split()),  # one line: the runtime's message has line breaks
    )


def _worker(
    conn: Connection, path: str, threads: int, input_file: str | None, batch: int, warmup: int
) -> None:
    from edgeinfer.tools.modelinfo import open_model

    try:
        started = time.perf_counter()
        model, fmt = open_model(Path(path), threads=threads)
        load_ms = (time.perf_counter() - started) * 1000
        single, batched = sample_feeds(model, Path(input_file) if input_file else None, batch)
        can_batch = infer_batch_axes(model.inputs, model.outputs).batchable and batch > 1
        try:
            time_runs(model, single, warmup)
        except ModelError as exc:
            if input_file is not None:
                raise
            raise _generated_input_refused(single, exc) from exc
        if can_batch:
            time_runs(model, batched, max(1, warmup // 4))
        conn.send(
            (
                "ready",
                {
                    "format": fmt,
                    "runtime": model.runtime,
                    "load_ms": load_ms,
                    "can_batch": can_batch,
                },
            )
        )
        while True:
            command, runs = conn.recv()
            if command == "stop":
                status = Path("/proc/self/status").read_text()
                hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
                conn.send(("peak", hwm))
                return
            feeds = batched if command == "batch" else single
            conn.send(("times", time_runs(model, feeds, runs)))
    except (EdgeInferError, ValueError, RuntimeError) as exc:
        conn.send(("error", exc))


def bench_models(
    paths: list[Path],
    batch: int = 8,
    runs: int = 200,
    warmup: int = 20,
    threads: int = 0,
    input_file: Path | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> list[BenchResult]:
    """Benchmark ``paths`` side by side; raises ConfigError for a bad model or input.

    ``on_round(done, total)`` after each model's timed runs of a round (for progress).
    """
    if batch < 1 or runs < ROUNDS or warmup < 0:
        raise ConfigError(
            "--batch/--runs/--warmup",
            (batch, runs, warmup),
            f"batch >= 1, runs >= {ROUNDS}, warmup >= 0",
        )
    ctx = multiprocessing.get_context("spawn")
    workers = []
    try:
        for path in paths:
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(
                    child,
                    str(path),
                    threads,
                    str(input_file) if input_file else None,
                    batch,
                    warmup,
                ),
                daemon=True,
            )
            proc.start()
            workers.append((path, parent, proc, _expect(parent, "ready")))
        singles: dict[Path, list[float]] = {p: [] for p in paths}
        batches: dict[Path, list[float]] = {p: [] for p in paths}
        done = 0
        for rnd in range(ROUNDS):
            order = workers[rnd % len(workers) :] + workers[: rnd % len(workers)]
            for path, conn, _, info in order:
                conn.send(("single", runs // ROUNDS))
                singles[path] += _expect(conn, "times")
                if info["can_batch"]:
                    conn.send(("batch", max(1, runs // ROUNDS // 4)))
                    batches[path] += _expect(conn, "times")
                if on_round is not None:
                    done += 1
                    on_round(done, ROUNDS * len(workers))
        results = []
        for path, conn, proc, info in workers:
            conn.send(("stop", 0))
            peak = _expect(conn, "peak")
            proc.join(10)
            ms = np.asarray(singles[path]) * 1000
            batch_times = batches[path]
            results.append(
                BenchResult(
                    model=str(path),
                    format=info["format"],
                    runtime=info["runtime"],
                    load_ms=round(info["load_ms"], 2),
                    p50_ms=round(float(np.percentile(ms, 50)), 4),
                    p95_ms=round(float(np.percentile(ms, 95)), 4),
                    p99_ms=round(float(np.percentile(ms, 99)), 4),
                    throughput=round(1000 / float(ms.mean()), 1),
                    batch=batch,
                    batch_throughput=round(batch / float(np.mean(batch_times)), 1)
                    if batch_times
                    else None,
                    peak_rss_mb=round(peak, 1),
                    runs=len(ms),
                )
            )
        return results
    finally:
        for _, _, proc, *_ in workers:
            if proc.is_alive():
                proc.kill()


def _expect(conn: Connection, kind: str) -> Any:
    if not conn.poll(120):
        raise EdgeInferError("a benchmark worker stopped answering")
    got, value = conn.recv()
    if got == "error":
        raise value
    if got != kind:
        raise EdgeInferError(f"benchmark worker sent {got!r}, expected {kind!r}")
    return value


def results_table(results: list[BenchResult]) -> str:
    """A table with ratios against the first model."""
    base = results[0]
    head = (
        f"{'model':<40} {'format':<7} {'load ms':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'1-sample/s':>11} {'batch/s':>9} {'peak MB':>8} {'speed-up':>9}"
    )
    lines = [head]
    for r in results:
        batch = f"{r.batch_throughput:.0f}" if r.batch_throughput is not None else "-"
        lines.append(
            f"{_short(r.model):<40} {r.format:<7} {r.load_ms:>8.1f} {r.p50_ms:>8.4f} "
            f"{r.p95_ms:>8.4f} {r.p99_ms:>8.4f} {r.throughput:>11.0f} {batch:>9} "
            f"{r.peak_rss_mb:>8.1f} {base.p50_ms / r.p50_ms:>8.2f}x"
        )
    lines.append(f"(batch = {base.batch}; speed-up = p50 of the first model / p50 of this one)")
    return "\n".join(lines)


def results_json(results: list[BenchResult]) -> dict[str, Any]:
    base = results[0]
    return {
        "models": [
            asdict(r) | {"speedup_vs_first": round(base.p50_ms / r.p50_ms, 3)} for r in results
        ]
    }


def _short(path: str) -> str:
    return path if len(path) <= 40 else "..." + path[-37:]
