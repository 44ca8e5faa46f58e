"""Test helpers: the module as a real process, and an MQTT client that collects messages."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import orjson
import paho.mqtt.client as paho

from edgeinfer.config import BrokerConfig
from edgeinfer.tools.launch import ModuleLauncher
from edgeinfer.tools.simulate import connect_client

ROOT = Path(__file__).resolve().parent.parent
ONNX_MODEL = ROOT / "models" / "har" / "onnx" / "model.onnx"
TFLITE_MODEL = ROOT / "models" / "har" / "tflite" / "model.tflite"


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Collector:
    """Subscribes to topics and keeps every message that arrives, in order."""

    def __init__(
        self,
        url: str | BrokerConfig,
        topics: list[str],
        persistent: bool = False,
        protocol: str = "5",
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        # A persistent session keeps results queued for us across a broker restart.
        self.client = connect_client(
            url,
            client_id=unique("sink") if persistent else "",
            on_message=self._on_message,
            subscribe=topics,
            session_expiry_s=300 if persistent else 0,
            protocol=protocol,
        )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def docs(self, topic_part: str = "") -> list[dict[str, Any]]:
        with self._cond:
            return [orjson.loads(p) for t, p in self.messages if topic_part in t]

    def close(self) -> None:
        """Disconnect (once: a second call does nothing)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A QoS 1 publisher that can wait until the broker has acknowledged everything sent.

    Messages sent while disconnected stay queued in paho and go out after the
    reconnect; ``flush`` counts PUBACKs, so it waits for those too.
    """

    def __init__(
        self, url: str | BrokerConfig, persistent: bool = False, reconnect_delay_s: float = 0.1
    ) -> None:
        self.client = connect_client(
            url,
            client_id=unique("pub") if persistent else "",
            session_expiry_s=300 if persistent else 0,
            reconnect_delay_s=reconnect_delay_s,
        )
        self._cond = threading.Condition()
        self._sent = 0
        self._acked = 0
        self.client.on_publish = self._on_publish

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        with self._cond:
            self._acked += 1
            self._cond.notify_all()

    def send(
        self,
        topic: str,
        payload: bytes | dict[str, Any] | list[Any],
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        with self._cond:
            self._sent += 1
        self.client.publish(topic, body, qos=qos, retain=retain)

    def flush(self, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._acked >= self._sent, timeout):
                raise AssertionError(f"broker acknowledged {self._acked} of {self._sent}")

    def close(self, flush: bool = True) -> None:
        """Wait for the broker's acknowledgements (``flush``), then disconnect (once)."""
        if getattr(self, "_closed", False):
            return
        if flush:
            self.flush()
        self._closed = True
        self.client.disconnect()
        self.client.loop_stop()


class ModuleProcess(ModuleLauncher):
    """``python -m edgeinfer run`` in a child process, on topics of its own."""

    #: Every module started, so a fixture can stop them even when a test fails mid-start.
    launched: ClassVar[list[ModuleProcess]] = []

    def __init__(
        self,
        broker_url: str,
        model: Path,
        tmp: Path,
        module_id: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        module_id = module_id or unique("m")
        self.prefix = module_id
        super().__init__(
            broker_url,
            model,
            tmp / f"state-{module_id}",
            module_id,
            env={
                "EDGEINFER_TOPICS_INPUTS": f"{self.prefix}/sensors/#",
                "EDGEINFER_TOPICS_OUTPUT": f"{self.prefix}/inference/{{topic}}",
                "EDGEINFER_BROKER_RECONNECT_MIN_S": "0.1",
                "EDGEINFER_BROKER_RECONNECT_MAX_S": "1",
                **(env or {}),
            },
            log_path=tmp / f"{module_id}.log",
        )

    def topic(self, leaf: str) -> str:
        """An input topic of this module: ``<prefix>/sensors/<leaf>``."""
        return f"{self.prefix}/sensors/{leaf}"

    def result_topic(self, leaf: str) -> str:
        return f"{self.prefix}/inference/{self.topic(leaf)}"

    @property
    def errors_topic(self) -> str:
        return f"edgeinfer/{self.module_id}/errors"

    def start(self, wait: bool = True, timeout: float = 20.0) -> ModuleProcess:
        ModuleProcess.launched.append(self)
        return super().start(wait, timeout)

    def wait_ready(self, timeout: float = 20.0, poll_s: float = 0.02) -> float:
        try:
            return super().wait_ready(timeout, poll_s)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def wait_metric(self, name: str, value: float, timeout: float = 5.0) -> float:
        """``name`` once it reaches ``value`` (or its last reading at the timeout).

        Counters bumped on the broker's PUBACK can trail the subscriber that
        already received the message, so exact checks wait for them to settle.
        """
        deadline = time.monotonic() + timeout
        current = self.metric(name)
        while current < value and time.monotonic() < deadline:
            time.sleep(0.02)
            current = self.metric(name)
        return current


def off_loopback(
    broker_url: str, model: Path, tmp: Path, token: str | None = None
) -> ModuleProcess:
    """A started module listening on every address (0.0.0.0: not a loopback one), with
    ``token`` in its ``http.token_file`` when given (a trailing newline, as editors leave)."""
    env = {}
    if token is not None:
        path = tmp / unique("token")
        path.write_text(token + "\n")
        env["EDGEINFER_HTTP_TOKEN_FILE"] = str(path)
    module = ModuleProcess(broker_url, model, tmp, env=env)
    module.env["EDGEINFER_HTTP_LISTEN"] = f"0.0.0.0:{module.http_port}"
    return module.start()


def on_terminal(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """``edgeinfer *args`` with stderr on a pseudo-terminal and stdout on a pipe.

    Returns (exit code, stdout, everything drawn on the terminal, escape codes included).
    """
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeinfer", *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        env={**os.environ, **(env or {})},
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = proc.communicate(timeout=timeout)
    os.close(leader)
    return proc.returncode, out, drawn.decode(errors="replace")
