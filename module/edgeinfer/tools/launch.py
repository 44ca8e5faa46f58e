"""``edgeinfer run`` as a child process: start it, wait until it is ready, look at it, stop it.

Used by the demo, the benchmarks and the tests, so that "launch a module and
poll ``/readyz``" is written once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, TypeVar

from edgeinfer.tools.broker import free_port


def wait_ready(
    port: int, timeout: float, proc: subprocess.Popen[bytes], poll_s: float = 0.02
) -> float:
    """Poll ``/readyz`` on ``port`` until it answers 200; returns the seconds it took.

    Raises:
        RuntimeError: ``proc`` exited first.
        TimeoutError: not ready within ``timeout`` seconds.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the module exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"the module was not ready within {timeout} s")


L = TypeVar("L", bound="ModuleLauncher")


class ModuleLauncher:
    """One module process with its own HTTP port, state directory and environment."""

    def __init__(
        self,
        broker_url: str,
        model: Path | None,
        state_dir: Path,
        module_id: str,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.module_id = module_id
        self.state_dir = state_dir
        self.http_port = free_port()
        self.log_path = log_path
        self.env = dict(os.environ)
        self.env["EDGEINFER_HTTP_LISTEN"] = f"127.0.0.1:{self.http_port}"
        self.env.update(env or {})
        self.cmd = [sys.executable, "-m", "edgeinfer", "run", "--broker", broker_url]
        if model is not None:
            self.cmd += ["--model", str(model)]
        self.cmd += ["--module-id", module_id, "--state-dir", str(state_dir)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = 0.0  # from start() to ready, when start() waited

    def start(self: L, wait: bool = True, timeout: float = 30.0) -> L:
        """Start the process; with ``wait``, until it is ready (``ready_s`` says how long)."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            out = self.log_path.open("ab")
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=out)
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own descriptor
        if wait:
            self.wait_ready(timeout, poll_s=0.005)
            self.ready_s = time.monotonic() - started
        return self

    def wait_ready(self, timeout: float = 30.0, poll_s: float = 0.02) -> float:
        """Seconds until ``/readyz`` answered 200; raises naming the log's tail if never."""
        assert self.proc is not None, "start() first"
        try:
            return wait_ready(self.http_port, timeout, self.proc, poll_s)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {self.log()}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def http_get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path``; (0, b"") when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` in ``/metrics``."""
        status, body = self.http_get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def memory_mb(self) -> tuple[float, float]:
        """Resident memory now and at its peak (VmRSS, VmHWM), in MB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the module drains), then SIGKILL after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        """The last 4,000 characters of the module's log (when it has a log file)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]
