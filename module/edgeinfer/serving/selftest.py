"""The self-test gate: a candidate model must answer its test reading correctly and fast enough.

It runs in this process, before the model sees traffic: the reading goes
through the same decoder as live readings; then the outputs must be finite,
have the expected shape and range, match ``golden`` within ``atol``; and the
p95 of ``runs`` timed runs must be within ``max_latency_ms``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edgeinfer.errors import ModelError, ReadingError, UpdateError
from edgeinfer.pipeline.decode import Decoder
from edgeinfer.runtimes.base import Array, Model

SPEC_KEYS = {"inputs", "expect", "golden", "atol", "max_latency_ms"}
EXPECT_KEYS = {"output", "shape", "min", "max"}


def check_self_test_spec(spec: object) -> None:
    """Validate a ``self_test`` block before anything is downloaded; raises UpdateError."""
    if not isinstance(spec, dict):
        raise UpdateError(f"self_test = {_show(spec)}: expected an object")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise UpdateError(
            f'"self_test" has unknown fields {unknown}: expected only {sorted(SPEC_KEYS)}'
        )
    inputs = spec.get("inputs")
    if inputs is not None and not isinstance(inputs, dict | list):
        raise UpdateError(
            f"self_test.inputs = {_show(inputs)}: expected a reading "
            '(an object with "features" or "inputs", or an array)'
        )
    _check_expect_spec(spec.get("expect"))
    for key in ("atol", "max_latency_ms"):
        value = spec.get(key)
        if value is not None and not (_number(value) and value >= 0):
            raise UpdateError(f"self_test.{key} = {_show(value)}: expected a number >= 0")
    golden = spec.get("golden")
    if golden is None:
        return
    if not isinstance(golden, dict):
        raise UpdateError(f"self_test.golden = {_show(golden)}: expected {{output name: array}}")
    for name, value in golden.items():
        try:
            arr = np.asarray(value)
        except ValueError:
            arr = np.asarray(None)
        if arr.dtype.kind not in "biuf":
            raise UpdateError(
                f"self_test.golden.{name} = {_show(value)}: expected a rectangular array of numbers"
            )


def _check_expect_spec(expect: object) -> None:
    if expect is None:
        return
    if not isinstance(expect, dict):
        raise UpdateError(f"self_test.expect = {_show(expect)}: expected an object")
    unknown = sorted(set(expect) - EXPECT_KEYS)
    if unknown:
        raise UpdateError(
            f'"self_test.expect" has unknown fields {unknown}: expected only {sorted(EXPECT_KEYS)}'
        )
    output = expect.get("output")
    if output is not None and not isinstance(output, str):
        raise UpdateError(f"self_test.expect.output = {_show(output)}: expected an output name")
    shape = expect.get("shape")
    if shape is not None and (
        not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
    ):
        raise UpdateError(
            f"self_test.expect.shape = {_show(shape)}: expected a list of integers >= 0"
        )
    for key in ("min", "max"):
        value = expect.get(key)
        if value is not None and not _number(value):
            raise UpdateError(f"self_test.expect.{key} = {_show(value)}: expected a number")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class SelfTestReport:
    """What the self-test measured."""

    p95_ms: float
    outputs: dict[str, list[int]]  # output name -> shape


def run_self_test(model: Model, spec: dict[str, Any] | None, runs: int = 20) -> SelfTestReport:
    """Raise UpdateError naming the first check the model fails."""
    spec = spec or {}
    feeds = _test_feeds(model, spec.get("inputs"))
    try:
        outputs = model.run(feeds)
        timings = []
        for _ in range(max(1, runs)):
            started = time.perf_counter()
            model.run(feeds)
            timings.append((time.perf_counter() - started) * 1000)
    except ModelError as exc:
        raise UpdateError(f"self-test: the model failed to run its test reading: {exc}") from exc
    for name, value in outputs.items():
        if np.asarray(value).dtype.kind in "fc" and not np.isfinite(value).all():
            raise UpdateError(
                f"self-test: output {name!r} holds NaN or infinity: expected finite values"
            )
    _check_expect(outputs, spec.get("expect") or {})
    _check_golden(outputs, spec.get("golden") or {}, float(spec.get("atol", 1e-4)))
    p95 = float(np.percentile(timings, 95))
    limit = spec.get("max_latency_ms")
    if limit is not None and p95 > float(limit):
        raise UpdateError(
            f"self-test: p95 latency {p95:.2f} ms over {len(timings)} runs: "
            f"expected at most {limit} ms (self_test.max_latency_ms)"
        )
    return SelfTestReport(p95, {k: list(np.shape(v)) for k, v in outputs.items()})


def _test_feeds(model: Model, reading: Any) -> dict[str, Array]:
    decoder = Decoder(model.inputs, max_bytes=1 << 26)
    if reading is None:
        # No test reading: zeros shaped like one sample still prove it loads and runs.
        return {
            s.name: np.zeros(
                [1] + [d if isinstance(d, int) and d > 0 else 1 for d in s.sample_shape],
                dtype=s.dtype,
            )
            for s in model.inputs
        }
    try:
        return decoder.decode(orjson.dumps(reading)).feeds
    except ReadingError as exc:
        raise UpdateError(
            f"self-test: the test reading does not fit the model: {exc.reason}"
        ) from exc


def _check_expect(outputs: dict[str, Array], expect: dict[str, Any]) -> None:
    if not expect:
        return
    name = expect.get("output") or next(iter(outputs))
    if name not in outputs:
        raise UpdateError(f"self-test: the model has no output {name!r}: it has {sorted(outputs)}")
    value = np.asarray(outputs[name])
    shape = expect.get("shape")
    if shape is not None and list(value.shape) != list(shape):
        raise UpdateError(
            f"self-test: output {name!r} has shape {list(value.shape)}: expected {list(shape)}"
        )
    low, high = expect.get("min"), expect.get("max")
    if low is not None and value.size and float(value.min()) < float(low):
        raise UpdateError(
            f"self-test: output {name!r} goes down to {float(value.min()):.6g}: expected >= {low}"
        )
    if high is not None and value.size and float(value.max()) > float(high):
        raise UpdateError(
            f"self-test: output {name!r} goes up to {float(value.max()):.6g}: expected <= {high}"
        )


def _check_golden(outputs: dict[str, Array], golden: dict[str, Any], atol: float) -> None:
    for name, expected in golden.items():
        if name not in outputs:
            raise UpdateError(
                f"self-test: golden names output {name!r}, the model has {sorted(outputs)}"
            )
        got = np.asarray(outputs[name], dtype=np.float64)
        want = np.asarray(expected, dtype=np.float64)
        if got.shape != want.shape:
            raise UpdateError(
                f"self-test: output {name!r} has shape {list(got.shape)}, golden "
                f"has {list(want.shape)}"
            )
        gap = float(np.abs(got - want).max()) if got.size else 0.0
        if gap > atol:
            raise UpdateError(
                f"self-test: output {name!r} differs from golden by {gap:.3g}: "
                f"expected at most atol {atol}"
            )
