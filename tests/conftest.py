"""Fixtures: a mosquitto the suite starts on a free port, modules, models."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings, load_recordings
from tests import ports
from tests.support import ModuleProcess
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
def rig(broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess]) -> Iterator[Rig]:
    r = Rig(broker, tmp_path, modules)
    yield r
    r.close()
