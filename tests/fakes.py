"""Fakes for unit tests of one stage: a publisher that records, and the engine's and the
loader's settings of a default configuration (the runtime fake is
``edgeinfer.runtimes.fake``, which the package ships for its in-process engine tests)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import orjson

from edgeinfer.config import Config
from edgeinfer.pipeline.engine import EngineSettings
from edgeinfer.pipeline.message import Outcome
from edgeinfer.serving.admission import RuntimeOptions
from edgeinfer.topics import TopicTemplate


def engine_settings(**changes: Any) -> EngineSettings:
    """The settings a module on the default configuration gives its engine, with
    ``changes``; results on ``out/{topic}``, module ``m``, no stream journal unless given."""
    defaults = EngineSettings.from_config(Config())
    unchanged = {"output": TopicTemplate.parse("out/{topic}"), "module_id": "m", "journal": None}
    return dataclasses.replace(defaults, **{**unchanged, **changes})


def runtime_options(**changes: Any) -> RuntimeOptions:
    """How a module on the default configuration loads and tests models, with ``changes``."""
    return dataclasses.replace(RuntimeOptions.from_config(Config()), **changes)


class FakePublisher:
    """Records what is published; the broker accepts everything at once unless held."""

    def __init__(self, hold: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []
        self.pending: list[Outcome] = []
        self.hold = hold
        self.lock = threading.Lock()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_done: Outcome | None = None,
        token: object = None,
    ) -> None:
        with self.lock:
            self.sent.append((topic, orjson.loads(payload)))
        if on_done is not None:
            if self.hold:
                self.pending.append(on_done)
            else:
                on_done(None)

    def release(self) -> None:
        for outcome in self.pending:
            outcome(None)
        self.pending.clear()
