"""``deployment/kubernetes/``: valid against the Kubernetes schemas, and consistent with the module.

The schemas come with ``kubernetes-validate`` (strict: unknown fields fail), for
the oldest and newest Kubernetes versions it carries that we support. The
checks beyond the schema are what would break the module in a cluster without
any schema noticing: the config must load, the probes must reach the module's
port, every file the config names must be mounted, the grace period must cover
the drain.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml

from edgeinfer.config import load_config
from edgeinfer.topics import is_shared
from tests.support import ROOT

K8S = ROOT / "deployment" / "kubernetes"
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def resources() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def kind(name: str, called: str = "edgeinfer") -> dict[str, Any]:
    (doc,) = [d for _, d in resources() if d["kind"] == name and d["metadata"]["name"] == called]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    docs = resources()
    assert {d["kind"] for _, d in docs} >= {
        "ConfigMap",
        "Secret",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    }
    for _, doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises naming the field
    broken = copy.deepcopy(kind("StatefulSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_the_config_map_is_a_config_the_module_loads_for_replicas(tmp_path: Path) -> None:
    text = kind("ConfigMap", "edgeinfer-config")["data"]["edgeinfer.toml"]
    (tmp_path / "edgeinfer.toml").write_text(text)
    config = load_config(tmp_path / "edgeinfer.toml", env={"EDGEINFER_MODULE_ID": "edgeinfer-0"})
    assert all(is_shared(flt) for flt in config.topics.inputs)
    assert config.broker.shared_session_expiry_s <= 120
    assert config.module.labels["role"] == "replica"


def test_the_stateful_set_runs_the_module_the_way_the_config_expects() -> None:
    config = tomllib.loads(kind("ConfigMap", "edgeinfer-config")["data"]["edgeinfer.toml"])
    pod = kind("StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = int(config["http"]["listen"].rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e for e in container["env"]}
    # Each replica its own module id (and so client id, session and topics): its pod name.
    assert env["EDGEINFER_MODULE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["terminationGracePeriodSeconds"] > config["module"]["shutdown_timeout_s"]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    needed = [
        config["module"]["state_dir"],
        config["broker"]["password_file"],
        config["broker"]["ca_file"],
        config["broker"]["cert_file"],
        config["broker"]["key_file"],
        *config["updates"]["trusted_keys"],
    ]
    for path in needed:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path
    claims = [c["metadata"]["name"] for c in kind("StatefulSet")["spec"]["volumeClaimTemplates"]]
    state = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/edgeinfer")
    assert state["name"] in claims  # the model store outlives the pod
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {s["metadata"]["name"] for _, s in resources() if s["kind"] == "Secret"}
