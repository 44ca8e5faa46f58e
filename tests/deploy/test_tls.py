"""TLS to the broker end to end: mutual TLS and a password file on a real mosquitto."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from edgeinfer.config import BrokerConfig
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.pki import make_pki
from tests.support import ONNX_MODEL, Collector, ModuleProcess, Publisher

USER, PASSWORD = "edgeinfer", "s3cret-Pa55-word"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Path) -> Iterator[LocalBroker]:
    passwd = pki / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD], check=True)
    options = (
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
        f"keyfile {pki / 'server.key'}\nrequire_certificate true"
    )
    with LocalBroker(kind="mosquitto", listener_options=options, password_file=passwd) as b:
        yield b


def tls_env(pki: Path, **overrides: str) -> dict[str, str]:
    env = {
        "EDGEINFER_BROKER_CA_FILE": str(pki / "ca.crt"),
        "EDGEINFER_BROKER_CERT_FILE": str(pki / "client.crt"),
        "EDGEINFER_BROKER_KEY_FILE": str(pki / "client.key"),
        "EDGEINFER_BROKER_USERNAME": USER,
        "EDGEINFER_BROKER_PASSWORD": PASSWORD,
        "EDGEINFER_BROKER_RECONNECT_MIN_S": "0.2",
        "EDGEINFER_BROKER_RECONNECT_MAX_S": "1",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != "-"}


def client_config(broker: LocalBroker, pki: Path) -> BrokerConfig:
    return BrokerConfig(
        url=broker.url,
        ca_file=str(pki / "ca.crt"),
        cert_file=str(pki / "client.crt"),
        key_file=str(pki / "client.key"),
        username=USER,
        password=PASSWORD,
    )


def test_the_module_serves_over_mutual_tls_and_never_logs_the_password(
    tls_broker: LocalBroker, pki: Path, tmp_path: Path, recordings: Recordings
) -> None:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(PASSWORD + "\n")
    module = ModuleProcess(
        tls_broker.url,
        ONNX_MODEL,
        tmp_path,
        env=tls_env(
            pki,
            EDGEINFER_BROKER_PASSWORD="-",
            EDGEINFER_BROKER_PASSWORD_FILE=str(password_file),
            EDGEINFER_LOG_LEVEL="DEBUG",
        ),
    ).start()
    assert tls_broker.url.startswith("mqtts://")
    sink = Collector(client_config(tls_broker, pki), [module.result_topic("+")])
    pub = Publisher(client_config(tls_broker, pki))
    pub.send(module.topic("imu"), {"id": 5, "features": recordings.windows[5].tolist()})
    docs = [orjson.loads(p) for _, p in sink.wait_for(1)]
    assert docs[0]["id"] == 5
    assert docs[0]["label"] == recordings.label_names[recordings.labels[5]]
    assert f"connected to {tls_broker.url}" in module.log()
    assert PASSWORD not in module.log()
    assert PASSWORD not in module.http_get("/metrics")[1].decode()
    sink.close()
    pub.close()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"EDGEINFER_BROKER_CA_FILE": "stranger-ca.crt"}, "certificate verify failed"),
        (
            {"EDGEINFER_BROKER_CERT_FILE": "-", "EDGEINFER_BROKER_KEY_FILE": "-"},
            "certificate required",
        ),
        (
            {
                "EDGEINFER_BROKER_CERT_FILE": "expired-client.crt",
                "EDGEINFER_BROKER_KEY_FILE": "expired-client.key",
            },
            "certificate expired",
        ),
        # mosquitto 2 answers a wrong password with "Not authorized" (reason 0x87).
        (
            {"EDGEINFER_BROKER_PASSWORD": "wrong"},
            "refused the connection: Not authorized",
        ),
    ],
    ids=["wrong-ca", "no-client-cert", "expired-cert", "wrong-password"],
)
def test_wrong_tls_settings_are_refused_with_a_reason_and_retried(
    tls_broker: LocalBroker, pki: Path, tmp_path: Path, overrides: dict[str, str], reason: str
) -> None:
    resolved = {
        k: (str(pki / v) if v.endswith((".crt", ".key")) else v) for k, v in overrides.items()
    }
    module = ModuleProcess(
        tls_broker.url, ONNX_MODEL, tmp_path, env=tls_env(pki, **resolved)
    ).start(wait=False)
    deadline = time.monotonic() + 15
    status, doc = 0, {"reason": ""}
    while time.monotonic() < deadline:
        status, body = module.http_get("/readyz")
        if status == 503:
            doc = orjson.loads(body)
            if reason in doc["reason"]:
                break
        time.sleep(0.1)
    assert status == 503
    assert reason in doc["reason"], doc["reason"]
    assert doc["reason"].startswith("not connected to the broker: ")
    assert reason in module.log()
    assert module.proc is not None and module.proc.poll() is None, "it keeps retrying"
    assert PASSWORD not in module.log()


@pytest.fixture(scope="module")
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    passwd = tmp_path_factory.mktemp("passwd") / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD], check=True)
    with LocalBroker(kind="mosquitto", password_file=passwd) as b:
        yield b


def test_credentials_in_the_broker_url_log_in_and_are_never_shown(
    password_broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path
) -> None:
    host = password_broker.url.removeprefix("mqtt://")
    url = f"mqtt://{USER}:{PASSWORD.replace('-', '%2D')}@{host}"
    env = {"EDGEINFER_BROKER_PASWORD": "hunter2-typo", "EDGEINFER_SERVICE_HOST": "10.1.2.3"}
    module = ModuleProcess(url, ONNX_MODEL, tmp_path, env=env).start()
    modules.append(module)
    wrong = ModuleProcess(
        f"mqtt://{USER}:not-{PASSWORD}@{host}", ONNX_MODEL, tmp_path, env=env
    ).start(wait=False)
    modules.append(wrong)
    deadline = time.monotonic() + 10
    while "not authorised" not in module_reason(wrong).lower() and time.monotonic() < deadline:
        time.sleep(0.1)
    reason = module_reason(wrong)
    assert reason.startswith(f"not connected to the broker: broker mqtt://{host} refused"), reason
    for text in (module.log(), wrong.log(), reason):
        assert PASSWORD not in text and PASSWORD.replace("-", "%2D") not in text
        assert "hunter2" not in text
    assert (
        "EDGEINFER_BROKER_PASWORD is not a setting (did you mean EDGEINFER_BROKER_PASSWORD?); "
        "ignored"
    ) in module.log()


def module_reason(module: ModuleProcess) -> str:
    status, body = module.http_get("/readyz")
    return str(orjson.loads(body)["reason"]) if status == 503 else ""
