"""Over-the-air updates end to end: a real mosquitto, a local HTTP server, real models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, TFLITE_MODEL, on_terminal
from tests.updates_support import (
    HAR_LABELS,
    HAR_SELF_TEST,
    JUNK,
    ONNX,
    TFLITE,
    ModelServer,
    Rig,
    desired_for,
    nan_below_model,
    nan_model,
    update_is,
    wait_reported,
    wait_reported_after,
    wrong_shape_model,
)


def test_an_update_over_http_reports_each_step_and_swaps_the_model_in(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    url = server.add("/har-1.1.0.tflite", TFLITE)
    started = time.monotonic()
    rig.desire(
        desired_for(
            url,
            TFLITE,
            labels=HAR_LABELS,
            self_test=HAR_SELF_TEST,
            sequence=1,
        )
    )
    active = wait_reported(rig.sink, update_is("active", "1.1.0"))
    states = [d["update"]["state"] for d in rig.sink.docs("/reported")]
    assert (
        states.index("downloading")
        < states.index("verifying")
        < states.index("testing")
        < states.index("probation")
        < states.index("active")
    )
    assert active["model"]["version"] == "1.1.0"
    assert active["model"]["runtime"].startswith(("ai-edge-litert", "tflite-runtime"))
    assert active["model"]["sha256"] == desired_for(url, TFLITE)["model"]["sha256"]
    assert {(v["version"], v["current"], v["previous"]) for v in active["versions"]} == {
        ("1.0.0", False, True),
        ("1.1.0", True, False),
    }
    assert rig.link("current") == "models/har/1.1.0"
    assert rig.link("previous") == "models/har/1.0.0"
    assert (rig.store / "models/har/1.1.0/model.tflite").read_bytes() == TFLITE
    assert list((rig.store / "downloads").iterdir()) == []
    rig.reading(recordings, 3)
    deadline = time.monotonic() + 5
    while not rig.results() and time.monotonic() < deadline:  # not just any message: a result
        time.sleep(0.01)
    result = rig.results()[-1]
    assert result["version"] == "1.1.0"
    assert result["label"] == recordings.label_names[recordings.labels[3]]
    assert time.monotonic() - started < 10


def test_a_download_cut_midway_resumes_with_a_range_request(rig: Rig, server: ModelServer) -> None:
    url = server.add("/cut.tflite", TFLITE, cut_at=5000)
    rig.desire(desired_for(url, TFLITE, self_test=HAR_SELF_TEST))
    wait_reported(rig.sink, update_is("active", "1.1.0"))
    assert server.files["/cut.tflite"].ranges == ["bytes=5000-"]


def test_a_module_killed_mid_download_resumes_it_after_restart(
    rig: Rig, server: ModelServer
) -> None:
    url = server.add("/slow.tflite", TFLITE, stall_at=6000)
    rig.desire(desired_for(url, TFLITE, self_test=HAR_SELF_TEST))
    deadline = time.monotonic() + 10
    parts: list[Path] = []
    while time.monotonic() < deadline:
        parts = list((rig.store / "downloads").glob("*.part"))
        if parts and parts[0].stat().st_size >= 6000:
            break
        time.sleep(0.01)
    assert parts and parts[0].stat().st_size == 6000
    rig.module.signal(signal.SIGKILL)
    rig.module.wait()
    assert rig.link("current") == "models/har/1.0.0"
    server.files["/slow.tflite"].stall_at = None
    rig.module.start()
    wait_reported(rig.sink, update_is("active", "1.1.0"), timeout=20)
    assert "bytes=6000-" in server.files["/slow.tflite"].ranges
    assert rig.link("current") == "models/har/1.1.0"


def bad_cases(server: ModelServer) -> list[tuple[Any, str]]:
    """(desired document, the error the failed report must contain)."""
    good = server.add("/good.tflite", TFLITE)
    big = desired_for(server.add("/big.tflite", TFLITE), TFLITE)
    big["model"]["size"] = len(TFLITE) - 100
    wrong_hash = desired_for(good, TFLITE)
    wrong_hash["model"]["sha256"] = "0" * 64
    slow = HAR_SELF_TEST | {"max_latency_ms": 1e-6}
    return [
        (b"{not json", "desired state is not JSON"),
        (b"[1, 2]", "desired state is a JSON list: expected an object"),
        (
            {"model": {"name": "har", "version": "2"}, "extra": 1},
            "desired state has unknown fields ['extra']",
        ),
        (desired_for(good, TFLITE, name="../etc"), "model.name '../etc' is not allowed"),
        (desired_for(good, TFLITE, version="/abs"), "model.version '/abs' is not allowed"),
        (desired_for(good, TFLITE, version="a..b"), "model.version 'a..b' is not allowed"),
        (desired_for("ftp://x/m.tflite", TFLITE), "has scheme 'ftp': expected one of"),
        (desired_for(server.add("/missing", b"") + "x", TFLITE), "HTTP 404"),
        (
            desired_for(server.add("/stall.tflite", TFLITE, stall_at=100), TFLITE),
            "failed after 2 attempts: stalled",
        ),
        (big, "sent more than the declared size"),
        (wrong_hash, "sha256 mismatch"),
        (desired_for(server.add("/junk.onnx", JUNK), JUNK), "the model will not load"),
        (
            desired_for(server.add("/nan.onnx", nan_model()), nan_model()),
            "self-test: output 'probabilities' holds NaN or infinity",
        ),
        (
            desired_for(
                server.add("/shape.onnx", wrong_shape_model()),
                wrong_shape_model(),
                self_test=HAR_SELF_TEST,
            ),
            "self-test: output 'probabilities' has shape [1, 6]: expected [1, 4]",
        ),
        (desired_for(good, TFLITE, self_test=slow), "self-test: p95 latency"),
    ]


def test_bad_desired_states_are_refused_and_the_active_model_keeps_serving(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    for n, (doc, error) in enumerate(bad_cases(server)):
        before = len(rig.sink.docs("/reported"))
        rig.desire(doc)
        report = wait_reported_after(rig.sink, before, "failed")
        assert error in report["update"]["error"], (n, report["update"]["error"])
        assert report["model"]["version"] == "1.0.0"
        rig.reading(recordings, n)
        deadline = time.monotonic() + 5
        while not any(r["id"] == n for r in rig.results()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r["version"] for r in rig.results() if r["id"] == n] == ["1.0.0"]
    assert rig.link("current") == "models/har/1.0.0"
    assert sorted(p.name for p in (rig.store / "models/har").iterdir()) == ["1.0.0"]
    assert list((rig.store / "downloads").iterdir()) == []
    assert rig.sink.docs("/errors") == []


def test_a_model_that_fails_on_live_traffic_is_rolled_back_during_probation(
    rig_with: Callable[..., Rig],
    server: ModelServer,
    recordings: Recordings,
) -> None:
    rig = rig_with(EDGEINFER_UPDATES_PROBATION_S="30")
    means = recordings.windows.mean(axis=(1, 2))
    best = int(means.argmax())
    body = nan_below_model(float(means[best]) - 1e-3)
    self_test = {
        "inputs": {"features": recordings.windows[best].tolist()},
        "expect": {"output": "probabilities", "shape": [1, 1]},
    }
    rig.desire(
        desired_for(
            server.add("/sometimes-nan.onnx", body), body, version="2.0.0", self_test=self_test
        )
    )
    wait_reported(rig.sink, update_is("probation", "2.0.0"))
    for i in range(60):
        rig.reading(recordings, i)
    report = wait_reported(rig.sink, update_is("rolled_back", "2.0.0"))
    assert report["update"]["error"].startswith("probation: ")
    assert "gave NaN/inf" in report["update"]["error"]
    assert report["model"]["version"] == "1.0.0"
    assert rig.link("current") == "models/har/1.0.0"
    rig.reading(recordings, 999)
    deadline = time.monotonic() + 5
    while not any(r["id"] == 999 for r in rig.results()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["version"] for r in rig.results() if r["id"] == 999] == ["1.0.0"]
    state = orjson.loads((rig.store / "state.json").read_bytes())
    assert state["failed"] == ["har/2.0.0"]
    # The retained desired state comes again after a restart: not retried.
    before = len(rig.sink.docs("/reported"))
    rig.module.stop()
    rig.module.start()
    refused = wait_reported_after(rig.sink, before, "failed")
    assert refused["update"]["error"].startswith("har 2.0.0 failed here before (rolled back")
    assert refused["model"]["version"] == "1.0.0"
    assert rig.link("current") == "models/har/1.0.0"


def test_a_stored_version_without_url_is_activated_and_old_versions_are_pruned(
    rig_with: Callable[..., Rig],
    server: ModelServer,
) -> None:
    rig = rig_with(EDGEINFER_UPDATES_KEEP_VERSIONS="2")
    for version in ("1.1.0", "1.2.0"):
        rig.desire(
            desired_for(
                server.add(f"/{version}", TFLITE), TFLITE, version=version, self_test=HAR_SELF_TEST
            )
        )
        wait_reported(rig.sink, update_is("active", version))
    assert sorted(p.name for p in (rig.store / "models/har").iterdir()) == ["1.1.0", "1.2.0"]
    rig.desire({"model": {"name": "har", "version": "1.1.0"}})
    report = wait_reported(
        rig.sink,
        lambda d: (
            update_is("active", "1.1.0")(d)
            and d["model"]["version"] == "1.1.0"
            and rig.link("current") == "models/har/1.1.0"
        ),
    )
    assert report["model"]["version"] == "1.1.0"
    assert rig.link("previous") == "models/har/1.2.0"
    rig.desire({"model": {"name": "har", "version": "9.9.9"}})
    failed = wait_reported(rig.sink, update_is("failed", "9.9.9"))
    assert failed["update"]["error"] == "version har 9.9.9 is not in the store"


def test_a_newer_desired_state_supersedes_a_running_download(rig: Rig, server: ModelServer) -> None:
    slow = server.add("/stuck.tflite", TFLITE, stall_at=3000)
    rig.desire(desired_for(slow, TFLITE, version="1.5.0", self_test=HAR_SELF_TEST))
    wait_reported(rig.sink, update_is("downloading", "1.5.0"))
    rig.desire(
        desired_for(
            server.add("/fast.tflite", TFLITE), TFLITE, version="1.6.0", self_test=HAR_SELF_TEST
        )
    )
    server.release.set()
    wait_reported(rig.sink, update_is("active", "1.6.0"))
    time.sleep(0.3)
    assert "1.5.0" not in {p.name for p in (rig.store / "models/har").iterdir()}
    assert not any(update_is("active", "1.5.0")(d) for d in rig.sink.docs("/reported"))


def make_keys(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = tmp_path / "signer.pem"
    public = tmp_path / "signer.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def test_with_trusted_keys_only_signed_newer_documents_are_accepted(
    rig_with: Callable[..., Rig],
    tmp_path: Path,
    server: ModelServer,
) -> None:
    from edgeinfer.tools.deploy import build_desired
    from edgeinfer.updates.signing import load_private_key, sign

    private, public = make_keys(tmp_path)
    other, _ = make_keys(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)
    rig = rig_with(EDGEINFER_UPDATES_TRUSTED_KEYS=str(public))
    mid = rig.module.module_id
    url = server.add("/signed.tflite", TFLITE)

    unsigned = build_desired(TFLITE_MODEL, "1.1.0", url=url, sequence=10, module_id=mid)
    rig.desire(unsigned)
    assert "not signed" in wait_reported(rig.sink, update_is("failed", "1.1.0"))["update"]["error"]

    forged = build_desired(
        TFLITE_MODEL, "1.1.0", url=url, sequence=11, sign_key=other, module_id=mid
    )
    rig.desire(forged)
    report = wait_reported(
        rig.sink,
        lambda d: (
            update_is("failed", "1.1.0")(d) and "bad signature" in (d["update"]["error"] or "")
        ),
    )
    assert report["update"]["error"] == "bad signature: no trusted key verifies this desired state"

    tampered = build_desired(
        TFLITE_MODEL, "1.1.0", url=url, sequence=12, sign_key=private, module_id=mid
    )
    tampered["model"]["url"] = url + "?evil"
    rig.desire(tampered)
    wait_reported(
        rig.sink,
        lambda d: (
            "bad signature" in (d["update"]["error"] or "")
            and d["update"]["at"] > report["update"]["at"]
        ),
    )

    good = build_desired(
        TFLITE_MODEL, "1.1.0", url=url, sequence=20, sign_key=private, module_id=mid
    )
    rig.desire(good)
    wait_reported(rig.sink, update_is("active", "1.1.0"))

    replay = build_desired(
        TFLITE_MODEL, "1.2.0", url=url, sequence=20, sign_key=private, module_id=mid
    )
    rig.desire(replay)
    refused = wait_reported(rig.sink, update_is("failed", "1.2.0"))
    assert refused["update"]["error"] == (
        "sequence 20 is not higher than the last accepted 20: a replayed or older desired state"
    )
    assert rig.link("current") == "models/har/1.1.0"
    # The accepted document itself, delivered again after a restart, is no replay.
    rig.desire(good)
    rig.module.stop()
    rig.module.start()
    assert load_private_key(private) is not None and sign(good, load_private_key(private))
    time.sleep(1)
    assert rig.link("current") == "models/har/1.1.0"
    assert not [d for d in rig.sink.docs("/reported")[-3:] if d["update"]["state"] == "failed"]


def test_a_hand_edited_current_link_goes_through_the_self_test_gate(
    rig: Rig, server: ModelServer, tmp_path: Path
) -> None:
    rig.desire(desired_for(server.add("/m.tflite", TFLITE), TFLITE, self_test=HAR_SELF_TEST))
    wait_reported(rig.sink, update_is("active", "1.1.0"))
    started = time.monotonic()
    tmp_link = rig.store / "hand"
    os.symlink("models/har/1.0.0", tmp_link)
    os.replace(tmp_link, rig.store / "current")
    report = wait_reported(
        rig.sink,
        lambda d: update_is("active", "1.0.0")(d) and d["model"]["version"] == "1.0.0",
        timeout=5,
    )
    assert time.monotonic() - started < 2.0
    assert report["model"]["runtime"].startswith("onnxruntime")
    # A broken version, linked by hand: refused, and current is put back.
    broken = rig.store / "models/har/6.6.6"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(JUNK)
    os.symlink("models/har/6.6.6", tmp_link)
    os.replace(tmp_link, rig.store / "current")
    failed = wait_reported(rig.sink, update_is("failed", "6.6.6"), timeout=5)
    assert "the model will not load" in failed["update"]["error"]
    assert "current restored to har 1.0.0" in failed["update"]["error"]
    assert rig.link("current") == "models/har/1.0.0"


def test_a_model_dropped_into_the_inbox_is_installed(rig: Rig) -> None:
    import hashlib

    manifest = {
        "name": "har",
        "version": "3.0.0",
        "format": "tflite",
        "sha256": hashlib.sha256(TFLITE).hexdigest(),
        "size": len(TFLITE),
        "labels": HAR_LABELS,
        "self_test": HAR_SELF_TEST,
    }
    (rig.store / "inbox" / "har.tflite").write_bytes(TFLITE)
    (rig.store / "inbox" / "manifest.json").write_bytes(orjson.dumps(manifest))
    wait_reported(rig.sink, update_is("active", "3.0.0"))
    assert rig.link("current") == "models/har/3.0.0"
    assert list((rig.store / "inbox").iterdir()) == []
    # A drop whose hash does not match is refused and set aside with the reason.
    (rig.store / "inbox" / "bad.onnx").write_bytes(ONNX)
    (rig.store / "inbox" / "manifest.json").write_bytes(
        orjson.dumps(manifest | {"version": "3.1.0", "size": len(ONNX), "sha256": "1" * 64})
    )
    failed = wait_reported(rig.sink, update_is("failed", "3.1.0"))
    assert "sha256 mismatch" in failed["update"]["error"]
    rejected = next((rig.store / "inbox" / "rejected").iterdir())
    assert sorted(p.name for p in rejected.iterdir()) == ["bad.onnx", "manifest.json", "reason.txt"]
    assert rig.link("current") == "models/har/3.0.0"


def test_a_swap_under_steady_load_answers_every_reading_exactly_once(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    url = server.add("/load.tflite", TFLITE)
    total, rate = 1500, 500.0
    swap_at = threading.Event()

    def send() -> None:
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            rig.reading(recordings, i)
            if i == total // 3:
                swap_at.set()

    sender = threading.Thread(target=send)
    sender.start()
    assert swap_at.wait(10)
    rig.desire(
        desired_for(
            url,
            TFLITE,
            labels=HAR_LABELS,
            self_test=HAR_SELF_TEST,
        )
    )
    sender.join(30)
    deadline = time.monotonic() + 15
    while len(rig.results()) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    results = rig.results()
    counts = Counter(r["id"] for r in results)
    assert sorted(counts) == list(range(total))
    assert max(counts.values()) == 1, "a reading was answered twice"
    assert rig.sink.docs("/errors") == []
    versions = [r["version"] for r in sorted(results, key=lambda r: r["id"])]
    switch = versions.index("1.1.0")
    assert 0 < switch < total and set(versions[switch:]) == {"1.1.0"}
    assert set(versions[:switch]) == {"1.0.0"}
    assert all(
        r["label"] == recordings.label_names[recordings.labels[r["id"] % 40]] for r in results
    )
    assert np.isfinite([r["score"] for r in results]).all()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_deploy_and_status_commands_drive_an_update(
    rig_with: Callable[..., Rig], broker: LocalBroker
) -> None:
    # deploy's default URL is the file's file:// URL: the module must allow its directory.
    models = str(TFLITE_MODEL.parent.parent)
    rig = rig_with(EDGEINFER_UPDATES_FILE_ROOTS=models)
    mid = rig.module.module_id
    deployed = run_cli(
        "deploy",
        "--module-id",
        mid,
        "--model",
        str(TFLITE_MODEL),
        "--version",
        "1.1.0",
        "--broker",
        broker.url,
        "--sequence",
        "42",
    )
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.startswith(f"desired state for {mid}: har 1.1.0 sha256 ")
    assert deployed.stdout.strip().endswith(f"{len(TFLITE)} bytes, sequence 42")
    wait_reported(rig.sink, update_is("active", "1.1.0"))
    status = run_cli("status", "--module-id", mid, "--broker", broker.url, "--json")
    assert status.returncode == 0, status.stderr
    doc = orjson.loads(status.stdout)
    table = run_cli("status", "--module-id", mid, "--broker", broker.url)
    assert f"module    {mid}" in table.stdout
    assert "update    active  har 1.1.0" in table.stdout
    assert doc["module_id"] == mid
    assert (doc["model"]["name"], doc["model"]["version"]) == ("har", "1.1.0")
    assert doc["update"]["state"] == "active"
    bad = run_cli(
        "deploy",
        "--module-id",
        mid,
        "--model",
        str(ONNX_MODEL.parent / "manifest.json"),
        "--version",
        "2",
        "--broker",
        broker.url,
    )
    assert bad.returncode == 2
    assert "--model = " in bad.stderr and "not a model file" in bad.stderr
    missing = run_cli("status", "--module-id", "nobody-here", "--broker", broker.url)
    assert missing.returncode == 1
    assert "no reported state for module 'nobody-here'" in missing.stderr


def test_a_current_model_that_fails_its_self_test_at_start_falls_back_to_previous(
    rig: Rig, server: ModelServer
) -> None:
    rig.desire(desired_for(server.add("/m.tflite", TFLITE), TFLITE, self_test=HAR_SELF_TEST))
    wait_reported(rig.sink, update_is("active", "1.1.0"))
    rig.module.stop()
    (rig.store / "models/har/1.1.0/model.tflite").write_bytes(JUNK)
    rig.module.start()
    assert rig.link("current") == "models/har/1.0.0"
    assert "current model failed at start" in rig.module.log()
    report = wait_reported(
        rig.sink, lambda d: d["model"]["version"] == "1.0.0" and d["update"]["state"] == "idle"
    )
    assert report["model"]["runtime"].startswith("onnxruntime")


def test_deploy_wait_follows_the_update_to_active_or_to_its_failure(
    rig_with: Callable[..., Rig], broker: LocalBroker, tmp_path: Path
) -> None:
    models = str(TFLITE_MODEL.parent.parent)
    rig = rig_with(EDGEINFER_UPDATES_FILE_ROOTS=models)
    mid = rig.module.module_id
    common = ("--module-id", mid, "--broker", broker.url, "--wait", "--timeout", "30")
    done = run_cli("deploy", "--model", str(TFLITE_MODEL), "--version", "1.1.0", *common)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert steps[-1] == "active" and "testing" in steps and "probation" in steps
    # An update the module refuses (its file:// URL is outside updates.file_roots): the
    # command shows the reason and exits 1.
    elsewhere = tmp_path / "elsewhere" / "model.onnx"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(ONNX_MODEL.read_bytes())
    failed = run_cli("deploy", "--model", str(elsewhere), "--version", "1.2.0", *common)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    last = failed.stdout.splitlines()[-1]
    assert last.startswith("  failed: ") and "file_roots" in last
    # On a terminal: a progress bar on stderr for the steps, the outcome on stdout.
    code, out, drawn = on_terminal(
        "deploy", "--model", str(ONNX_MODEL), "--version", "1.3.0", *common, timeout=60
    )
    assert code == 0, out
    assert out.splitlines()[-1] == "  active"
    assert "\x1b[" in drawn  # drawn, not printed line by line
