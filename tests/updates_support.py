"""Test helpers for updates: a model server with faults, reported-state waits, bad models."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, TFLITE_MODEL, Collector, ModuleProcess, Publisher


@dataclass
class Served:
    """One file the server offers, and how it misbehaves."""

    body: bytes
    cut_at: int | None = None  # first request: close the connection after this many bytes
    stall_at: int | None = None  # every request: stop sending here and hang
    ranges: list[str] = field(default_factory=list)  # Range headers received
    requests: int = 0


class ModelServer:
    """A local HTTP server that honours Range and can cut or stall a download."""

    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.release = threading.Event()  # ends every stall
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                served = server.files.get(self.path)
                if served is None:
                    self.send_error(404, "Not Found")
                    return
                served.requests += 1
                header = self.headers.get("Range")
                start = 0
                if header:
                    served.ranges.append(header)
                    start = int(header.split("=")[1].split("-")[0])
                body = served.body[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(body)))
                if header:
                    end = len(served.body) - 1
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(served.body)}")
                self.end_headers()
                limit = len(body)
                if served.cut_at is not None and served.requests == 1:
                    limit = max(0, served.cut_at - start)
                if served.stall_at is not None:
                    limit = min(limit, max(0, served.stall_at - start))
                self.wfile.write(body[:limit])
                self.wfile.flush()
                if served.stall_at is not None and limit < len(body):
                    server.release.wait(30)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def add(self, path: str, body: bytes, **faults: Any) -> str:
        self.files[path] = Served(body, **faults)
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def desired_for(
    url: str, body: bytes, name: str = "har", version: str = "1.1.0", **extra: Any
) -> dict[str, Any]:
    """A desired state for ``body`` served at ``url``."""
    doc: dict[str, Any] = {
        "model": {
            "name": name,
            "version": version,
            "url": url,
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
        }
    }
    doc.update(extra)
    return doc


def wait_reported(
    sink: Collector, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    """The first reported document matching ``predicate``."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = sink.docs("/reported")
        for doc in seen:
            if predicate(doc):
                return doc
        time.sleep(0.02)
    states = [
        (
            d["update"]["state"],
            d["update"]["target"],
            d["model"].get("version"),
            d["update"]["error"],
        )
        for d in seen[-5:]
    ]
    raise AssertionError(f"no matching reported state within {timeout} s; last: {states}")


def wait_reported_after(
    sink: Collector, before: int, state: str, timeout: float = 15.0
) -> dict[str, Any]:
    """The first report in ``state`` among those published after the first ``before``."""
    deadline = time.monotonic() + timeout
    newer: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        newer = sink.docs("/reported")[before:]
        for doc in newer:
            if doc["update"]["state"] == state:
                return doc
        time.sleep(0.02)
    states = [(d["update"]["state"], d["update"]["error"]) for d in newer[-5:]]
    raise AssertionError(f"no {state!r} report within {timeout} s; newer ones: {states}")


def update_is(state: str, version: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(doc: dict[str, Any]) -> bool:
        update = doc["update"]
        target = update.get("target") or {}
        return update["state"] == state and (version is None or target.get("version") == version)

    return check


def onnx_model(
    nodes: list[Any], outputs: list[tuple[str, list[Any]]], initializers: list[Any] | None = None
) -> bytes:
    """An ONNX model over the HAR input ``window`` float32 [batch, 100, 6]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", 100, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializers or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def nan_model() -> bytes:
    """Outputs NaN for every reading: probabilities = mean(window) * NaN, shape [batch, 4]."""
    from onnx import helper, numpy_helper

    return onnx_model(
        [
            helper.make_node("ReduceMean", ["window"], ["m"], axes=[1], keepdims=0),
            helper.make_node("Mul", ["m", "nan"], ["probabilities"]),
        ],
        [("probabilities", ["batch", 6])],
        [numpy_helper.from_array(np.full((6,), np.nan, np.float32), "nan")],
    )


def wrong_shape_model() -> bytes:
    """probabilities shaped [batch, 6] instead of [batch, 4]."""
    from onnx import helper

    return onnx_model(
        [helper.make_node("ReduceMean", ["window"], ["probabilities"], axes=[1], keepdims=0)],
        [("probabilities", ["batch", 6])],
    )


def nan_below_model(threshold: float) -> bytes:
    """sqrt(mean(window) - threshold): finite only for windows whose mean exceeds it."""
    from onnx import helper, numpy_helper

    return onnx_model(
        [
            helper.make_node("ReduceMean", ["window"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("Unsqueeze", ["m", "one"], ["m2"]),
            helper.make_node("Sub", ["m2", "t"], ["d"]),
            helper.make_node("Sqrt", ["d"], ["probabilities"]),
        ],
        [("probabilities", ["batch", 1])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array(threshold, np.float32), "t"),
        ],
    )


UPDATE_ENV = {
    "EDGEINFER_UPDATES_PROBATION_S": "0.5",
    "EDGEINFER_UPDATES_DOWNLOAD_TIMEOUT_S": "1",
    "EDGEINFER_UPDATES_DOWNLOAD_RETRIES": "1",
    "EDGEINFER_UPDATES_ALLOW_HTTP": "true",
}
TFLITE = TFLITE_MODEL.read_bytes()
ONNX = ONNX_MODEL.read_bytes()
HAR_MANIFEST = orjson.loads((TFLITE_MODEL.parent / "manifest.json").read_bytes())
HAR_SELF_TEST = HAR_MANIFEST["self_test"]
HAR_LABELS = HAR_MANIFEST["labels"]
JUNK = b"\x08\x07 this is not a model at all" * 10


class Rig:
    """A module on probation-short settings, a sink on its topics, a publisher."""

    def __init__(
        self, broker: LocalBroker, tmp: Path, modules: list[ModuleProcess], **env: str
    ) -> None:
        module = ModuleProcess(broker.url, ONNX_MODEL, tmp, env={**UPDATE_ENV, **env})
        modules.append(module)
        self._attach(module.start(), broker)

    @classmethod
    def around(cls, module: ModuleProcess, broker: LocalBroker) -> Rig:
        """A rig for a module the test started itself."""
        rig = cls.__new__(cls)
        rig._attach(module, broker)
        return rig

    def _attach(self, module: ModuleProcess, broker: LocalBroker) -> None:
        self.module = module
        mid = self.module.module_id
        self.sink = Collector(
            broker.url,
            [f"edgeinfer/{mid}/reported", self.module.result_topic("+"), self.module.errors_topic],
        )
        self.pub = Publisher(broker.url)
        self.desired_topic = f"edgeinfer/{mid}/desired"

    def desire(self, doc: dict[str, Any] | bytes) -> None:
        self.pub.send(self.desired_topic, doc, retain=True)
        self.pub.flush()

    def reading(self, recordings: Recordings, i: int) -> None:
        self.pub.send(
            self.module.topic("imu"), {"id": i, "features": recordings.windows[i % 40].tolist()}
        )

    def results(self) -> list[dict[str, Any]]:
        return self.sink.docs("/inference/")

    @property
    def store(self) -> Path:
        return self.module.state_dir

    def link(self, which: str) -> str:
        return os.readlink(self.store / which)

    def close(self, flush: bool = True) -> None:
        self.sink.close()
        self.pub.close(flush)


def busy_model(layers: int = 12, channels: int = 64, side: int = 256) -> bytes:
    """A conv net of a fraction of a second a reading (~0.3 s here) that takes the HAR window:
    its mean spread over a ``channels`` x ``side`` x ``side`` image, ``layers`` 3x3 convs."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ReduceMean", ["window"], ["m"], axes=[1, 2], keepdims=1),
        helper.make_node("Unsqueeze", ["m", "axis3"], ["m4"]),
        helper.make_node("Expand", ["m4", "image"], ["x0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("Conv", [f"x{i}", "w"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Tanh", [f"c{i}"], [f"x{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"x{layers}"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    weights = [
        numpy_helper.from_array(np.array([3], np.int64), "axis3"),
        numpy_helper.from_array(np.array([1, channels, side, side], np.int64), "image"),
        numpy_helper.from_array(
            (rng.standard_normal((channels, channels, 3, 3)) / 10).astype(np.float32), "w"
        ),
        numpy_helper.from_array(rng.standard_normal((channels, 4)).astype(np.float32), "head"),
    ]
    return onnx_model(nodes, [("probabilities", ["batch", 4])], weights)


def slow_model(hidden: int = 1024, seed: int = 0) -> bytes:
    """An MLP over the HAR window (600 -> hidden -> hidden -> 4, softmax): ~1 ms a reading."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name
        )
        for name, shape in (("w1", (600, hidden)), ("w2", (hidden, hidden)), ("w3", (hidden, 4)))
    ]
    return onnx_model(
        [
            helper.make_node("Reshape", ["window", "flat"], ["x"]),
            helper.make_node("MatMul", ["x", "w1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["r1"]),
            helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
            helper.make_node("Relu", ["h2"], ["r2"]),
            helper.make_node("MatMul", ["r2", "w3"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        [("probabilities", ["batch", 4])],
        [numpy_helper.from_array(np.array([-1, 600], np.int64), "flat"), *weights],
    )
