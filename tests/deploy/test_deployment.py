"""What the image, the compose stack and the systemd unit would run, tested without Docker."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from edgeinfer.config import load_config
from edgeinfer.tools.broker import LocalBroker, free_port, port_open
from edgeinfer.tools.launch import wait_ready
from edgeinfer.tools.recordings import Recordings
from tests.support import ROOT, Collector, Publisher

DOCKERFILE = ROOT / "Dockerfile"
DEPLOYMENT = ROOT / "deployment"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def test_the_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_contract_non_root_healthcheck_entrypoint_port_and_volume() -> None:
    steps = instructions()
    stages = [args for word, args in steps if word == "FROM"]
    assert len(stages) == 2 and all("-slim" in s for s in stages), stages
    final = dict(final_stage())  # the last of each instruction wins, as in Docker
    env = image_env()
    assert final["USER"] == "10001:10001"
    assert final["ENTRYPOINT"] == '["edgeinfer"]'
    assert final["CMD"] == '["run"]'
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["HEALTHCHECK"].endswith('CMD ["edgeinfer", "health"]')
    assert final["EXPOSE"] == env["EDGEINFER_HTTP_LISTEN"].rsplit(":", 1)[1] == "9108"
    assert final["VOLUME"] == f'["{env["EDGEINFER_MODULE_STATE_DIR"]}"]'
    installs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert len(installs) == 1 and installs[0].endswith("pip install --no-cache-dir .")
    for word, args in steps:
        if word == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
    seed = env["EDGEINFER_MODEL_PATH"].replace("/opt/edgeinfer/seed/har", "models/har/onnx")
    assert (ROOT / seed).is_file()
    load_config(env={k: v for k, v in env.items() if k.startswith("EDGEINFER_")})


def test_the_images_install_and_command_run_in_a_fresh_venv_and_become_ready(
    broker: LocalBroker, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip_line = next(a for w, a in instructions() if w == "RUN" and "pip install" in a)
    # The Dockerfile's command, in its own venv; only the pip cache is kept, for speed.
    args = pip_line.split("pip install", 1)[1].replace("--no-cache-dir", "").split()
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *args], cwd=ROOT, check=True, timeout=600
    )
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {p["name"].lower() for p in orjson.loads(installed)}
    assert {"onnxruntime", "paho-mqtt", "ai-edge-litert"} <= names
    assert not names & {"pytest", "ruff", "mypy", "tensorflow", "amqtt"}, "extras installed"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEINFER_")}
    env.update(image_env())
    env.update(
        PATH=f"{venv / 'bin'}:{env['PATH']}",
        EDGEINFER_HTTP_LISTEN=f"127.0.0.1:{port}",
        EDGEINFER_MODULE_STATE_DIR=str(tmp_path / "state"),
        EDGEINFER_MODEL_PATH=str(ROOT / "models/har/onnx/model.onnx"),
        EDGEINFER_BROKER_URL=broker.url,
    )
    entry = [str(venv / "bin" / "edgeinfer"), "run"]  # ENTRYPOINT + CMD
    proc = subprocess.Popen(entry, env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        wait_ready(port, 30, proc)
        health = subprocess.run(
            [str(venv / "bin" / "edgeinfer"), "health"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert health.returncode == 0, health.stderr
        assert orjson.loads(health.stdout) == {"status": "alive"}
        ready = subprocess.run(
            [str(venv / "bin" / "edgeinfer"), "health", "--ready"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert orjson.loads(ready.stdout) == {"ready": True, "reason": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)  # what `docker stop` does
        assert proc.wait(15) == 0
    assert (tmp_path / "state" / "current").is_symlink()


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOYMENT / "compose.yaml").read_text()))


def setup_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "deployment"
    shutil.copytree(DEPLOYMENT, copy, ignore=shutil.ignore_patterns("certs", "secrets", "passwd"))
    result = subprocess.run(
        ["bash", str(copy / "setup.sh"), "localhost"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return copy


def test_compose_references_only_files_and_settings_that_exist(tmp_path: Path) -> None:
    copy = setup_copy(tmp_path)
    doc = compose()
    assert set(doc["services"]) == {"mosquitto", "edgeinfer", "simulator", "prometheus", "grafana"}
    assert doc["services"]["simulator"]["profiles"] == ["simulator"]
    assert "${" not in (DEPLOYMENT / "compose.yaml").read_text(), "no unset variables"
    named = set(doc["volumes"])
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in named or (copy / source).exists(), (name, source)
        for env_file in service.get("env_file", []):
            assert (copy / env_file).is_file()
        for secret in service.get("secrets", []):
            assert (copy / doc["secrets"][secret]["file"]).is_file()
    assert (DEPLOYMENT / doc["services"]["edgeinfer"]["build"]["context"] / "Dockerfile").is_file()
    env = dict(
        line.split("=", 1)
        for line in (DEPLOYMENT / "edgeinfer.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    config = load_config(env=env)
    assert config.broker.tls and config.broker.password_file == "/run/secrets/mqtt_password"


def test_the_compose_broker_config_and_env_work_together(
    tmp_path: Path, recordings: Recordings
) -> None:
    """mosquitto on compose's config, edgeinfer on edgeinfer.env: container paths mapped."""
    copy = setup_copy(tmp_path)
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    conf = (copy / "mosquitto" / "mosquitto.conf").read_text()
    conf = (
        conf.replace("/mosquitto/config/passwd", str(copy / "mosquitto" / "passwd"))
        .replace("/mosquitto/certs/", f"{copy / 'certs'}/")
        .replace("/mosquitto/data/", f"{data}/")
        .replace("listener 8883", f"listener {port} 127.0.0.1")
    )
    (tmp_path / "mosquitto.conf").write_text(conf + ("\nuser root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "mosquitto did not listen on the compose config"
        time.sleep(0.05)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEINFER_")}
    for line in (copy / "edgeinfer.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = (
                value.replace("/etc/edgeinfer/certs", str(copy / "certs"))
                .replace("/run/secrets/mqtt_password", str(copy / "secrets/mqtt_password"))
                .replace("mqtts://mosquitto:8883", f"mqtts://localhost:{port}")
            )
    http = free_port()
    env.update(
        EDGEINFER_HTTP_LISTEN=f"127.0.0.1:{http}",
        EDGEINFER_MODULE_STATE_DIR=str(tmp_path / "state"),
        EDGEINFER_MODEL_PATH=str(ROOT / "models/har/onnx/model.onnx"),
    )
    module = subprocess.Popen(
        [sys.executable, "-m", "edgeinfer", "run"], env=env, stderr=subprocess.PIPE
    )
    try:
        try:
            wait_ready(http, 20, module)
        except RuntimeError as exc:  # it exited: show why
            pytest.fail(f"{exc}: {module.stderr.read().decode() if module.stderr else ''}")
        tools = load_config(env={k: v for k, v in env.items() if k.startswith("EDGEINFER_")})
        sink = Collector(tools.broker, ["inference/#"])
        pub = Publisher(tools.broker)
        pub.send("sensors/gw/imu", {"id": 1, "features": recordings.windows[1].tolist()})
        doc = orjson.loads(sink.wait_for(1, timeout=20)[0][1])
        assert doc["id"] == 1 and doc["model"] == "har"
        sink.close()
        pub.close()
    finally:
        module.send_signal(signal.SIGTERM)
        module.wait(15)
        proc.terminate()
        proc.wait(10)


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (DEPLOYMENT / "systemd" / "edgeinfer.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["ExecStart"] == (
        "/opt/edgeinfer/bin/edgeinfer run --config /etc/edgeinfer/edgeinfer.toml"
    )
    for key, value in {
        "User": "edgeinfer",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/edgeinfer",
        "StateDirectory": "edgeinfer",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "KillSignal": "SIGTERM",
        "ProtectHome": "yes",
    }.items():
        assert settings[key] == value, key
    assert settings["Environment"] == "EDGEINFER_MODULE_STATE_DIR=/var/lib/edgeinfer"
    # systemd-analyze checks that ExecStart exists: point a copy at a real install.
    copy = tmp_path / "edgeinfer.service"
    copy.write_text(
        unit.replace("/opt/edgeinfer/bin/edgeinfer", str(Path(sys.executable).parent / "edgeinfer"))
    )
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run does)")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
