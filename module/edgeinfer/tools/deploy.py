"""``edgeinfer deploy`` and ``edgeinfer status``: the operator's side of the desired state."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import ConfigError, EdgeInferError, ModelError
from edgeinfer.manifest.document import load_manifest
from edgeinfer.runtimes import detect_format
from edgeinfer.tools.simulate import connect_client
from edgeinfer.updates.desired import MANIFEST_KEYS
from edgeinfer.updates.signing import load_private_key, sign


def build_desired(
    model: Path | None,
    version: str,
    name: str | None = None,
    url: str | None = None,
    sign_key: Path | None = None,
    sequence: int | None = None,
    module_id: str | None = None,
) -> dict[str, Any]:
    """The desired-state document for ``model`` (or, without one, a stored version).

    With ``module_id`` it names the module it is for (``target``): a signed
    document is refused by every other module.
    """
    doc: dict[str, Any]
    if model is None:
        if not name:
            raise ConfigError(
                "--name",
                name,
                "a model name when no --model is given (activating a version already in the store)",
            )
        doc = {"model": {"name": name, "version": version}}
    else:
        try:
            data = model.read_bytes()
            fmt = detect_format(model)
        except ModelError as exc:
            raise ConfigError("--model", str(model), f"an ONNX or TFLite model ({exc})") from exc
        except OSError as exc:
            raise ConfigError("--model", str(model), f"a readable file ({exc.strerror})") from exc
        manifest = load_manifest(model)
        doc = {
            "model": {
                "name": name or manifest.name,
                "version": version,
                "url": url or model.resolve().as_uri(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "format": fmt,
            }
        }
        if manifest.labels:
            doc["labels"] = list(manifest.labels)
        if manifest.self_test:
            doc["self_test"] = manifest.self_test
        extensions = manifest.to_doc()
        # How to serve it (batch axes, labels, window, state) travels with the update.
        doc.update({key: extensions[key] for key in MANIFEST_KEYS if key in extensions})
    if module_id is not None:
        doc["target"] = {"module_id": module_id}
    # Milliseconds since the epoch: increases from one deploy to the next
    # without the operator keeping count.
    doc["sequence"] = sequence if sequence is not None else int(time.time() * 1000)
    if sign_key is not None:
        doc["signature"] = sign(doc, load_private_key(sign_key))
    return doc


def publish_desired(
    broker: str | BrokerConfig, module_id: str, doc: dict[str, Any], protocol: str = "5"
) -> None:
    """Publish ``doc`` retained (QoS 1) and wait for the broker to take it."""
    client = connect_client(broker, protocol=protocol)
    try:
        info = client.publish(
            f"edgeinfer/{module_id}/desired", orjson.dumps(doc), qos=1, retain=True
        )
        info.wait_for_publish(10)
    except (RuntimeError, ValueError) as exc:
        raise EdgeInferError(f"could not publish the desired state: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()


def read_reported(
    broker: str | BrokerConfig, module_id: str, timeout: float = 5.0
) -> dict[str, Any]:
    """The module's retained reported state; raises if none arrives within ``timeout``."""
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        arrived.set()

    client = connect_client(
        broker, on_message=on_message, subscribe=[f"edgeinfer/{module_id}/reported"]
    )
    try:
        if not arrived.wait(timeout):
            raise EdgeInferError(
                f"no reported state for module {module_id!r} on {broker} "
                f"within {timeout:.0f} s (is the module id right?)"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    doc = orjson.loads(got[0])
    if not isinstance(doc, dict):
        raise EdgeInferError(f"the reported state of {module_id!r} is not a JSON object")
    return doc


#: The update states that end an update.
SETTLED = ("active", "failed", "rolled_back")


def follow_update(
    broker: str | BrokerConfig,
    module_id: str,
    name: str,
    version: str,
    since: float,
    timeout: float,
    show: Callable[[str, float | None], None] = lambda step, done: print(step),
    start: Callable[[], None] = lambda: None,
) -> str:
    """Follow the reported state until the update to ``name version`` settles.

    Only reports made after ``since`` (``time.time()`` when the desired state was
    published) count: the retained one may be an older attempt's. Each new step is
    shown with how far the update got (the download's fraction, 1 once settled, else
    None); returns the final state, or ``"timeout"``. ``start`` runs once subscribed
    (publishing the desired state there, no step can come before the follower).
    """
    states: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        update = doc.get("update") if isinstance(doc, dict) else None
        if isinstance(update, dict):
            states.put(doc)

    client = connect_client(
        broker, on_message=on_message, subscribe=[f"edgeinfer/{module_id}/reported"]
    )
    deadline = time.monotonic() + timeout
    last = ""
    try:
        start()
        while (left := deadline - time.monotonic()) > 0:
            try:
                doc = states.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            update = doc["update"]
            target = update.get("target") or {}
            if (target.get("name"), target.get("version")) != (name, version):
                continue
            if _epoch(update.get("at")) < since - 1.0:
                continue  # an earlier attempt's report
            step = _step(update, doc.get("rollout"))
            if step != last:
                settled = update["state"] in SETTLED
                fraction = update.get("progress") if update["state"] == "downloading" else None
                show(step, 1.0 if settled else fraction)
                last = step
            if update["state"] in SETTLED:
                return str(update["state"])
    finally:
        client.disconnect()
        client.loop_stop()
    return "timeout"


def _step(update: dict[str, Any], rollout: dict[str, Any] | None) -> str:
    text = f"  {update['state']}"
    if update.get("progress") is not None and update["state"] == "downloading":
        text += f" {update['progress']:.0%}"
    if rollout and update["state"] == "probation":
        text += f" (rollout {rollout.get('mode')} {rollout.get('percent', 0):g}%, "
        text += f"{rollout.get('compared', 0)} compared, {rollout.get('verdict')})"
    if update.get("error"):
        text += f": {update['error']}"
    return text


def _epoch(at: object) -> float:
    if not isinstance(at, str):
        return 0.0
    try:
        return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
