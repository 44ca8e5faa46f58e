"""Configuration: precedence, validation messages, and the example file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from edgeinfer.config import SECTIONS, Config, load_config
from edgeinfer.errors import ConfigError
from tests.support import ONNX_MODEL, ROOT


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[broker]\nurl = "mqtt://file:1"\nkeepalive_s = 40\n'
        "[pipeline]\nmax_batch = 4\nmax_delay_ms = 1\n"
    )
    env = {"EDGEINFER_BROKER_URL": "mqtt://env:2", "EDGEINFER_PIPELINE_MAX_BATCH": "8"}
    config = load_config(
        path, env=env, overrides={"broker.url": "mqtt://flag:3", "model.path": None}
    )
    assert config.broker.url == "mqtt://flag:3"
    assert config.broker.keepalive_s == 40
    assert config.pipeline.max_batch == 8
    assert config.pipeline.max_delay_ms == 1.0
    assert config.model.path == ""


def test_defaults_serve_sensors_against_localhost() -> None:
    config = load_config(env={})
    assert (config.broker.host, config.broker.port) == ("localhost", 1883)
    assert config.topics.inputs == ["sensors/#"]
    assert config.topics.output == "inference/{topic}"
    assert config.client_id == "edgeinfer-edgeinfer"


def test_environment_lists_are_comma_separated_and_booleans_are_words() -> None:
    config = load_config(
        env={
            "EDGEINFER_TOPICS_INPUTS": "a/#, b/+/c",
            "EDGEINFER_PIPELINE_ALLOW_NON_FINITE": "yes",
            "EDGEINFER_CONFIG": "",
        }
    )
    assert config.topics.inputs == ["a/#", "b/+/c"]
    assert config.pipeline.allow_non_finite is True


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"EDGEINFER_PIPELINE_MAX_BATCH": "0"},
            "pipeline.max_batch = 0: expected an integer in 1..4096",
        ),
        (
            {"EDGEINFER_PIPELINE_MAX_BATCH": "many"},
            "pipeline.max_batch = 'many': expected an integer",
        ),
        (
            {"EDGEINFER_BROKER_URL": "http://x"},
            "broker.url = 'http://x': expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
        ),
        (
            {"EDGEINFER_TOPICS_INPUTS": "a/#/b"},
            "topics.inputs = 'a/#/b': expected a topic filter where '#' is last and wildcards fill "
            "whole levels (or $share/<group>/<filter>)",
        ),
        (
            {"EDGEINFER_TOPICS_OUTPUT": "out/{device}"},
            "topics.output = 'out/{device}': expected a template using only {topic}, {module_id}, "
            "{1}, {2}, ...",
        ),
        (
            {"EDGEINFER_MODULE_ID": "../etc"},
            "module.id = '../etc': expected 1-64 characters of letters, digits, '_', '-', '.', "
            "starting with a letter or digit",
        ),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_was_expected(
    source: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=source)
    assert str(info.value) == message


def test_unknown_keys_in_the_file_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[pipeline]\nmax_bacth = 3\n")
    with pytest.raises(ConfigError, match=r"pipeline.max_bacth = 3: expected a known key"):
        load_config(path, env={})
    path.write_text("[pipe]\nmax_batch = 3\n")
    with pytest.raises(ConfigError, match=r"pipe = .*expected a \[section\]"):
        load_config(path, env={})


def test_the_example_file_documents_every_key_with_its_default() -> None:
    example = tomllib.loads((ROOT / "deployment" / "edgeinfer.example.toml").read_text())
    defaults = Config()
    assert sorted(example) == sorted(SECTIONS)
    for name in SECTIONS:
        section = getattr(defaults, name)
        expected = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        assert example[name] == expected, name
    assert load_config(ROOT / "deployment" / "edgeinfer.example.toml", env={}) == defaults


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEINFER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_the_cli_exits_2_naming_the_bad_key_and_value(tmp_path: Path) -> None:
    state = ("--state-dir", str(tmp_path / "state"))
    bad = run_cli(
        "run", "--model", str(ONNX_MODEL), *state, env={"EDGEINFER_PIPELINE_QUEUE_SIZE": "0"}
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "edgeinfer: bad configuration: pipeline.queue_size = 0: expected an integer >= 1"
    )
    missing = run_cli("run", "--model", str(tmp_path / "nope.onnx"), *state)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"edgeinfer: bad configuration: model.path = "
        f"'{tmp_path / 'nope.onnx'}': expected an existing ONNX "
        "or TFLite model file"
    )
    not_a_model = tmp_path / "model.onnx"
    not_a_model.write_text("hello")
    junk = run_cli("run", "--model", str(not_a_model), *state)
    assert junk.returncode == 2
    assert "not a model file: expected an ONNX protobuf or a TFLite flatbuffer" in junk.stderr
    no_model = run_cli("run", "--state-dir", str(tmp_path / "empty"))
    assert no_model.returncode == 2
    assert "model.path = '': expected a model file (--model)" in no_model.stderr
    # A store that already serves a model does not excuse a wrong --model path.
    from edgeinfer.manifest.document import Manifest
    from edgeinfer.updates.store import ModelStore

    store = ModelStore(tmp_path / "seeded")
    store.activate(store.install(ONNX_MODEL, Manifest("har", "1.0.0", format="onnx")))
    stale = run_cli("run", "--model", str(tmp_path / "gone.onnx"), "--state-dir", str(store.root))
    assert stale.returncode == 2
    assert "gone.onnx': expected an existing ONNX or TFLite model file" in stale.stderr
    usage = run_cli("run", "--bogus")
    assert usage.returncode == 2


def test_environment_variables_that_are_not_settings_are_ignored_near_misses_warned() -> None:
    warnings: list[str] = []
    config = load_config(
        env={
            "EDGEINFER_SERVICE_HOST": "10.0.0.7",  # Kubernetes, for a Service named edgeinfer
            "EDGEINFER_PORT_9108_TCP": "tcp://10.0.0.7:9108",
            "EDGEINFER_HTTP_SERVICE_PORT": "9108",
            "EDGEINFER_PIPELINE_MAXBATCH": "3",
            "EDGEINFER_BROKER_PASWORD": "hunter2",
        },
        warnings=warnings,
    )
    assert config.pipeline.max_batch == 32
    assert sorted(warnings) == [
        "EDGEINFER_BROKER_PASWORD is not a setting (did you mean EDGEINFER_BROKER_PASSWORD?); "
        "ignored",
        "EDGEINFER_PIPELINE_MAXBATCH is not a setting (did you mean "
        "EDGEINFER_PIPELINE_MAX_BATCH?); ignored",
    ]
    assert not any("hunter2" in w for w in warnings)


def test_a_password_set_in_a_higher_layer_replaces_both_password_keys_below(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("from-file\n")
    toml = tmp_path / "c.toml"
    toml.write_text('[broker]\nusername = "gw"\npassword = "in-the-toml"\n')
    config = load_config(toml, env={"EDGEINFER_BROKER_PASSWORD_FILE": str(secret)})
    assert (config.broker.password, config.broker.resolved_password()) == ("", "from-file")
    toml.write_text(f'[broker]\nusername = "gw"\npassword_file = "{secret}"\n')
    config = load_config(toml, env={"EDGEINFER_BROKER_PASSWORD": "from-env"})
    assert config.broker.resolved_password() == "from-env"


def test_credentials_in_the_broker_url_are_used_and_never_shown() -> None:
    config = load_config(env={"EDGEINFER_BROKER_URL": "mqtts://alice:s%40cret@broker:8883"})
    assert config.broker.username == "alice"
    assert config.broker.resolved_password() == "s@cret"
    assert config.broker.display_url == "mqtts://broker:8883"
    assert "s%40cret" not in repr(config) and "s@cret" not in repr(config)
    with pytest.raises(ConfigError) as info:
        load_config(
            env={"EDGEINFER_BROKER_URL": "mqtt://alice:pw@h", "EDGEINFER_BROKER_USERNAME": "bob"}
        )
    assert "pw" not in str(info.value)
    assert str(info.value) == (
        "broker.url = 'mqtt://alice:***@h': expected credentials either in the URL or in "
        "broker.username/password, not both"
    )
