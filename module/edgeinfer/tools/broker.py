"""A local MQTT broker for the demo, tests and benchmarks.

mosquitto from PATH when there is one (with ``set_tcp_nodelay true``: its
default Nagle adds ~15 ms to p99 on loopback), else amqtt, a pure-Python broker
run in a child process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOSQUITTO_CONF = """\
{user}
listener {port} 127.0.0.1
{listener_options}
{auth}
set_tcp_nodelay true
max_inflight_messages {max_inflight}
max_queued_messages 100000
persistence {persistence}
persistence_location {state}/
autosave_interval 0
log_dest stderr
log_type error
log_type warning
"""

_AMQTT_MAIN = """\
import asyncio, sys
from amqtt.broker import Broker
async def main(port):
    cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
           "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                       {"allow_anonymous": True}}}
    broker = Broker(cfg)
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1])))
"""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LocalBroker:
    """A broker process on 127.0.0.1 that can be stopped and restarted on the same port."""

    def __init__(
        self,
        port: int | None = None,
        persistence: bool = True,
        kind: str = "auto",
        listener_options: str = "",
        password_file: Path | None = None,
        max_inflight: int = 1000,
    ) -> None:
        self.port = port or free_port()
        self.persistence = persistence
        # mosquitto only: TLS options for the listener (cafile, certfile, ...) and
        # a password file that turns anonymous access off.
        self.listener_options = listener_options
        self.password_file = password_file
        # mosquitto sends it as its Receive Maximum (MQTT 5) and keeps to it itself.
        self.max_inflight = max_inflight
        self.kind = (
            ("mosquitto" if shutil.which("mosquitto") else "amqtt") if kind == "auto" else kind
        )
        self._dir = Path(tempfile.mkdtemp(prefix="edgeinfer-broker-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = self._dir / "broker.log"

    @property
    def url(self) -> str:
        scheme = "mqtts" if "certfile" in self.listener_options else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"the {self.kind} on port {self.port} is already running")
        log = self.log_path.open("ab")
        if self.kind == "mosquitto":
            conf = self._dir / "mosquitto.conf"
            auth = (
                f"allow_anonymous false\npassword_file {self.password_file}"
                if self.password_file
                else "allow_anonymous true"
            )
            conf.write_text(
                MOSQUITTO_CONF.format(
                    port=self.port,
                    state=self._dir,
                    listener_options=self.listener_options,
                    auth=auth,
                    # Started as root, mosquitto switches to user "mosquitto", which
                    # cannot read our private temp files: stay who we are.
                    user="user root" if os.geteuid() == 0 else "",
                    persistence="true" if self.persistence else "false",
                    max_inflight=self.max_inflight,
                )
            )
            cmd = [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        else:
            cmd = [sys.executable, "-c", _AMQTT_MAIN, str(self.port)]
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind} did not start on port {self.port}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop gracefully (mosquitto saves its persistence file on SIGTERM)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password and ACL files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)  # mosquitto reloads between two network passes

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        # ``with LocalBroker(...).start() as b`` must not start a second one on the port.
        if self._proc is not None and self._proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
