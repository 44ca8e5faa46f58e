"""Test helpers: the module as a real process, and an MQTT client that collects messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, ClassVar

import orjson
import paho.mqtt.client as paho

from edgeinfer.config import BrokerConfig
from edgeinfer.tools.broker import free_port
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

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


class ModuleProcess:
    """``python -m edgeinfer run`` in a child process, on its own topics."""

    def __init__(
        self,
        broker_url: str,
        model: Path,
        tmp: Path,
        module_id: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.module_id = module_id or unique("m")
        self.state_dir = tmp / f"state-{self.module_id}"
        self.prefix = self.module_id
        self.http_port = free_port()
        self.log_path = tmp / f"{self.module_id}.log"
        self.env = dict(os.environ)
        self.env.update(
            {
                "EDGEINFER_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                "EDGEINFER_TOPICS_INPUTS": f"{self.prefix}/sensors/#",
                "EDGEINFER_TOPICS_OUTPUT": f"{self.prefix}/inference/{{topic}}",
                "EDGEINFER_BROKER_RECONNECT_MIN_S": "0.1",
                "EDGEINFER_BROKER_RECONNECT_MAX_S": "1",
            }
        )
        self.env.update(env or {})
        self.cmd = [
            sys.executable,
            "-m",
            "edgeinfer",
            "run",
            "--broker",
            broker_url,
            "--model",
            str(model),
            "--module-id",
            self.module_id,
            "--state-dir",
            str(self.state_dir),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def topic(self, leaf: str) -> str:
        """An input topic of this module: ``<prefix>/sensors/<leaf>``."""
        return f"{self.prefix}/sensors/{leaf}"

    def result_topic(self, leaf: str) -> str:
        return f"{self.prefix}/inference/{self.topic(leaf)}"

    @property
    def errors_topic(self) -> str:
        return f"edgeinfer/{self.module_id}/errors"

    #: Every module started, so a fixture can stop them even when a test fails mid-start.
    launched: ClassVar[list[ModuleProcess]] = []

    def start(self, wait: bool = True) -> ModuleProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=log)
        ModuleProcess.launched.append(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"module exited {self.proc.returncode}: {self.log()}")
            if self.http_get("/readyz")[0] == 200:
                return
            time.sleep(0.02)
        raise AssertionError(f"module not ready in {timeout} s: {self.log()}")

    def http_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` in /metrics."""
        status, body = self.http_get("/metrics")
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

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

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
