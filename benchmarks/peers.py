"""The two reference contenders of the pipeline benchmark.

``passthrough``: the limit. Republishes each reading untouched, with the same
delivery rules as edgeinfer (manual ack after the broker acknowledged the
republished message, many in flight, TCP_NODELAY): only the model is missing.

``naive``: what the usual sample inference module does: in the message
callback, ``json.loads`` (or ``np.load`` for .npy bytes), one ``session.run``
per reading, ``json.dumps``, publish; paho acknowledges on receipt.

Usage: python benchmarks/peers.py passthrough|naive BROKER_PORT [MODEL]
"""

from __future__ import annotations

import io
import json
import signal
import socket
import sys
import threading
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    manual = mode == "passthrough"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"peer-{mode}",
        protocol=paho.MQTTv5,
        manual_ack=manual,
    )
    client.max_inflight_messages_set(1000)
    pending: dict[int, int] = {}
    lock = threading.Lock()

    if mode == "naive":
        import onnxruntime as ort

        session = ort.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]

        def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            if msg.payload[:6] == b"\x93NUMPY":
                doc: dict[str, Any] = {}
                x = np.load(io.BytesIO(msg.payload), allow_pickle=False)
            else:
                doc = json.loads(msg.payload)
                x = np.asarray(doc["features"], dtype=np.float32)
            if x.ndim < len(first.shape):
                x = x[np.newaxis]
            outputs = session.run(None, {first.name: x})
            out = {
                "id": doc.get("id"),
                "ts": doc.get("ts"),
                "topic": msg.topic,
                "outputs": {
                    o.name: v.tolist() for o, v in zip(session.get_outputs(), outputs, strict=True)
                },
            }
            c.publish(f"inference/{msg.topic}", json.dumps(out), qos=1)
    else:

        def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            info = c.publish(f"inference/{msg.topic}", msg.payload, qos=1)
            with lock:
                pending[info.mid] = msg.mid

        def on_publish(c: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            with lock:
                reading_mid = pending.pop(mid, None)
            if reading_mid is not None:
                c.ack(reading_mid, 1)

        client.on_publish = on_publish

    def on_connect(c: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe("sensors/#", qos=1)
        print("ready", flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
