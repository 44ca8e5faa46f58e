"""Fixtures: a mosquitto the suite starts on a free port, modules, models."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeinfer.config import BrokerConfig
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings, load_recordings
from tests import ports
from tests.support import ONNX_MODEL, Collector, ModuleProcess, Publisher
from tests.updates_support import ModelServer, Rig

ports.install()  # before any test module imports free_port by name


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One mosquitto for the suite; tests keep apart through unique topics."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not on PATH: apt-get install mosquitto (.ci/run does)")
    with LocalBroker(kind="mosquitto") as b:
        yield b


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A mosquitto for one test, which may stop and restart it."""
    with LocalBroker(kind="mosquitto", persistence=True) as b:
        yield b


@pytest.fixture(autouse=True)
def stop_modules() -> Iterator[None]:
    """Stop every module a test started, however the test ended."""
    yield
    while ModuleProcess.launched:
        ModuleProcess.launched.pop().stop()


@pytest.fixture
def modules() -> list[ModuleProcess]:
    """Modules a test keeps track of (stopping is done by stop_modules)."""
    return []


@pytest.fixture(scope="session")
def recordings() -> Recordings:
    return load_recordings()


@pytest.fixture(scope="session")
def multi_input_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX model with a float32 and an int64 input: y = sum(x, axis=1) + k."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
            helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["s", "kf"], ["y"]),
        ],
        "sum_plus_offset",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], np.array([1], np.int64))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("multi") / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def server() -> Iterator[ModelServer]:
    srv = ModelServer()
    yield srv
    srv.close()


@pytest.fixture
def rig_with(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess]
) -> Iterator[Callable[..., Rig]]:
    """Rigs (a module on probation-short settings, its sink and a publisher) with the
    module environment given, ``rig_with(EDGEINFER_UPDATES_PROBATION_S="60")``; closed
    after the test."""
    made: list[Rig] = []

    def make(**env: str) -> Rig:
        made.append(Rig(broker, tmp_path, modules, **env))
        return made[-1]

    yield make
    for r in made:
        r.close(flush=False)


@pytest.fixture
def rig(rig_with: Callable[..., Rig]) -> Rig:
    return rig_with()


@pytest.fixture
def collector(broker: LocalBroker) -> Iterator[Callable[..., Collector]]:
    """Collectors on the suite's broker (``url=`` another), ``collector([topic, ...])``;
    closed after the test."""
    made: list[Collector] = []

    def make(topics: list[str], url: str | BrokerConfig | None = None, **kw: Any) -> Collector:
        made.append(Collector(url or broker.url, topics, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def publisher(broker: LocalBroker) -> Iterator[Callable[..., Publisher]]:
    """QoS 1 publishers on the suite's broker (``url=`` another); closed after the test
    (without waiting for acknowledgements: a test that needs them flushes)."""
    made: list[Publisher] = []

    def make(url: str | BrokerConfig | None = None, **kw: Any) -> Publisher:
        made.append(Publisher(url or broker.url, **kw))
        return made[-1]

    yield make
    for p in made:
        p.close(flush=False)


@pytest.fixture
def module(broker: LocalBroker, tmp_path: Path) -> Callable[..., ModuleProcess]:
    """Modules on the suite's broker, started: ``module(env={...})``, ``module(model,
    wait=False)``; stopped after the test (stop_modules)."""

    def start(
        model: Path = ONNX_MODEL,
        env: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 20.0,
        **kw: Any,
    ) -> ModuleProcess:
        return ModuleProcess(broker.url, model, tmp_path, env=env, **kw).start(wait, timeout)

    return start
