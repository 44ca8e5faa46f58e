"""Updates that go wrong: probation bypasses, local files, replays, full disks, redirects."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.deploy import build_desired
from edgeinfer.tools.recordings import Recordings
from edgeinfer.updates.signing import sign
from tests.support import ONNX_MODEL, TFLITE_MODEL, ModuleProcess
from tests.updates_support import (
    HAR_LABELS,
    HAR_SELF_TEST,
    ONNX,
    TFLITE,
    ModelServer,
    Rig,
    desired_for,
    nan_below_model,
    onnx_model,
    update_is,
    wait_reported,
    wait_reported_after,
)


def keypair(tmp: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    public = tmp / f"trusted-{os.urandom(3).hex()}.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, public


def signed(doc: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return doc | {"signature": sign(doc, key)}


# -- probation ---------------------------------------------------------------------


def test_probation_is_not_ended_by_junk_or_by_the_same_desired_state_coming_again(
    rig_with: Callable[..., Rig],
    server: ModelServer,
    recordings: Recordings,
) -> None:
    rig = rig_with(EDGEINFER_UPDATES_PROBATION_S="60")
    means = recordings.windows.mean(axis=(1, 2))
    best = int(means.argmax())
    body = nan_below_model(float(means[best]) - 1e-3)  # NaN for every window but the best
    test = {"inputs": {"features": recordings.windows[best].tolist()}}
    doc = desired_for(server.add("/nan.onnx", body), body, version="2.0.0", self_test=test)
    rig.desire(doc)
    wait_reported(rig.sink, update_is("probation", "2.0.0"))
    rig.desire(b"{not json")  # junk: failed, but probation goes on
    rig.desire(doc)  # the retained document again, as after a reconnect
    rig.desire(doc | {"sequence": 5})  # the same model, re-sent
    time.sleep(1.0)
    assert rig.sink.docs("/reported")[-1]["model"]["version"] == "2.0.0"
    assert not [d for d in rig.sink.docs("/reported") if update_is("active", "2.0.0")(d)]
    for i in range(30):
        rig.reading(recordings, i)
    report = wait_reported(rig.sink, update_is("rolled_back", "2.0.0"))
    assert "NaN/inf" in report["update"]["error"]
    assert rig.link("current") == "models/har/1.0.0"


def test_a_model_on_probation_when_the_module_is_killed_is_watched_again_after_restart(
    rig_with: Callable[..., Rig],
    server: ModelServer,
    recordings: Recordings,
) -> None:
    rig = rig_with(EDGEINFER_UPDATES_PROBATION_S="60")
    means = recordings.windows.mean(axis=(1, 2))
    best = int(means.argmax())
    body = nan_below_model(float(means[best]) - 1e-3)
    test = {"inputs": {"features": recordings.windows[best].tolist()}}
    rig.desire(desired_for(server.add("/nan.onnx", body), body, version="2.0.0", self_test=test))
    wait_reported(rig.sink, update_is("probation", "2.0.0"))
    rig.module.signal(signal.SIGKILL)
    rig.module.wait()
    before = len(rig.sink.docs("/reported"))
    rig.module.start()
    wait_reported_after(rig.sink, before, "probation")
    for i in range(30):
        rig.reading(recordings, i)
    report = wait_reported(rig.sink, update_is("rolled_back", "2.0.0"))
    assert "NaN/inf" in report["update"]["error"]
    assert rig.link("current") == "models/har/1.0.0"


def test_a_newer_desired_state_during_probation_rolls_the_unproven_model_back_first(
    rig_with: Callable[..., Rig],
    server: ModelServer,
) -> None:
    rig = rig_with(EDGEINFER_UPDATES_PROBATION_S="60")
    rig.desire(desired_for(server.add("/a.tflite", TFLITE), TFLITE, version="2.0.0"))
    wait_reported(rig.sink, update_is("probation", "2.0.0"))
    rig.desire(desired_for(server.add("/b.tflite", TFLITE), TFLITE, version="3.0.0"))
    wait_reported(rig.sink, update_is("probation", "3.0.0"))
    # 2.0.0 never passed probation: it is not what a roll-back of 3.0.0 would go to.
    assert rig.link("previous") == "models/har/1.0.0"
    assert not [d for d in rig.sink.docs("/reported") if update_is("active", "2.0.0")(d)]


# -- file:// ------------------------------------------------------------------------


def test_file_urls_are_off_unless_configured_and_never_disclose_other_files(
    rig_with: Callable[..., Rig], tmp_path: Path
) -> None:
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"s3cr3t " * 100)
    rig = rig_with()
    before = len(rig.sink.docs("/reported"))
    rig.desire(desired_for(secret.as_uri(), b"x" * 10, version="9.0.0"))
    error = wait_reported_after(rig.sink, before, "failed")["update"]["error"]
    assert error == (
        f"model.url {secret.as_uri()!r}: file:// URLs are off (set updates.file_roots to "
        "the directories models may be installed from)"
    )

    models = tmp_path / "models"
    models.mkdir()
    (models / "link-to-secret").symlink_to(secret)
    (models / "zero").symlink_to("/dev/zero")
    (models / "har.tflite").write_bytes(TFLITE)
    rig = rig_with(EDGEINFER_UPDATES_FILE_ROOTS=str(models))
    cases = [
        (secret.as_uri(), "outside updates.file_roots"),
        ((models / "link-to-secret").as_uri(), "outside updates.file_roots"),
        ((models / "zero").as_uri(), "outside updates.file_roots"),
        ((models / "missing.onnx").as_uri(), "cannot be read"),
    ]
    for url, reason in cases:
        before = len(rig.sink.docs("/reported"))
        rig.desire(desired_for(url, b"y" * 10, version="9.0.1"))
        error = wait_reported_after(rig.sink, before, "failed")["update"]["error"]
        assert reason in error, (url, error)
    wrong_size = desired_for((models / "har.tflite").as_uri(), TFLITE[:100], version="9.0.2")
    before = len(rig.sink.docs("/reported"))
    rig.desire(wrong_size)
    error = wait_reported_after(rig.sink, before, "failed")["update"]["error"]
    assert "not the declared 100 bytes" in error
    assert str(len(TFLITE)) not in error
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    for doc in rig.sink.docs("/reported"):
        text = orjson.dumps(doc).decode()
        assert digest not in text and str(secret.stat().st_size) not in text
    rig.desire(desired_for((models / "har.tflite").as_uri(), TFLITE, version="9.1.0"))
    wait_reported(rig.sink, update_is("active", "9.1.0"))


# -- the same version with other bytes -------------------------------------------------


def test_redeploying_a_version_with_different_bytes_is_refused(
    rig: Rig, server: ModelServer
) -> None:
    rig.desire(desired_for(server.add("/v.tflite", TFLITE), TFLITE, self_test=HAR_SELF_TEST))
    wait_reported(rig.sink, update_is("active", "1.1.0"))
    before = len(rig.sink.docs("/reported"))
    rig.desire(desired_for(server.add("/v.onnx", ONNX), ONNX, self_test=HAR_SELF_TEST))
    report = wait_reported_after(rig.sink, before, "failed")
    assert report["update"]["error"] == (
        "har 1.1.0 is already installed with sha256 "
        f"{hashlib.sha256(TFLITE).hexdigest()}: a different build needs a new version"
    )
    assert (rig.store / "models/har/1.1.0/model.tflite").read_bytes() == TFLITE
    assert not (rig.store / "models/har/1.1.0/model.onnx").exists()
    assert rig.link("current") == "models/har/1.1.0"


# -- validation up front and failures that leave nothing behind ---------------------------


@pytest.mark.parametrize(
    ("self_test", "error"),
    [
        ({"expect": {"min": "low"}}, "self_test.expect.min = 'low': expected a number"),
        ({"expect": {"output": 5}}, "self_test.expect.output = 5: expected an output name"),
        ({"golden": {"probabilities": "x"}}, "self_test.golden.probabilities = 'x': expected"),
        ({"golden": {"p": [[1, "a"]]}}, "self_test.golden.p = [[1, 'a']]: expected"),
        ({"inputs": 7}, "self_test.inputs = 7: expected a reading"),
        ({"atol": True}, "self_test.atol = True: expected a number >= 0"),
    ],
)
def test_a_bad_self_test_is_refused_before_anything_is_downloaded(
    rig: Rig, server: ModelServer, self_test: dict[str, Any], error: str
) -> None:
    url = server.add("/t.tflite", TFLITE)
    rig.desire(desired_for(url, TFLITE, self_test=self_test))
    report = wait_reported(rig.sink, update_is("failed", "1.1.0"))
    assert error in report["update"]["error"]
    assert server.files["/t.tflite"].requests == 0
    states = [d["update"]["state"] for d in rig.sink.docs("/reported")]
    assert "testing" not in states and "downloading" not in states


def big_model() -> bytes:
    """A valid ONNX model of ~1.2 MB (a large constant it adds nothing with)."""
    import numpy as np
    from onnx import helper, numpy_helper

    pad = numpy_helper.from_array(np.zeros((300_000,), np.float32), "pad")
    return onnx_model(
        [
            helper.make_node("ReduceSum", ["pad"], ["zero"], keepdims=0),
            helper.make_node("ReduceMean", ["window"], ["m"], axes=[1], keepdims=0),
            helper.make_node("Slice", ["m", "s0", "s4", "ax"], ["m4"]),
            helper.make_node("Add", ["m4", "zero"], ["sum"]),
            helper.make_node("Softmax", ["sum"], ["probabilities"], axis=-1),
        ],
        [("probabilities", ["batch", 4])],
        [pad]
        + [
            numpy_helper.from_array(np.array([v], np.int64), n)
            for n, v in (("s0", 0), ("s4", 4), ("ax", 1))
        ],
    )


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path``; yields False where this machine cannot mount one."""
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_disk_that_fills_during_install_fails_the_update_and_leaves_nothing_behind(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess], server: ModelServer
) -> None:
    body = big_model()
    with small_disk(tmp_path / "disk", "2m") as mounted:
        if not mounted:
            pytest.fail("cannot mount a tmpfs here: run the suite as root (CI does)")
        module = ModuleProcess(
            broker.url,
            ONNX_MODEL,
            tmp_path,
            env={"EDGEINFER_UPDATES_ALLOW_HTTP": "true", "EDGEINFER_UPDATES_PROBATION_S": "0.5"},
        )
        module.state_dir = tmp_path / "disk" / "state"
        module.cmd[module.cmd.index("--state-dir") + 1] = str(module.state_dir)
        modules.append(module.start())
        rig = Rig.around(module, broker)
        rig.desire(desired_for(server.add("/big.onnx", body), body, version="5.0.0"))
        report = wait_reported(rig.sink, update_is("failed", "5.0.0"))
        assert "No space left on device" in report["update"]["error"]
        assert list((module.state_dir / "downloads").iterdir()) == []
        assert sorted(p.name for p in (module.state_dir / "models/har").iterdir()) == ["1.0.0"]
        assert rig.link("current") == "models/har/1.0.0"
        assert module.http_get("/readyz")[0] == 200
        rig.close()


# -- replays and documents for other modules ------------------------------------------------


def test_signed_documents_must_name_this_module_and_old_inbox_manifests_are_replays(
    rig_with: Callable[..., Rig],
    tmp_path: Path,
    server: ModelServer,
) -> None:
    key, public = keypair(tmp_path)
    trusted = {"EDGEINFER_UPDATES_TRUSTED_KEYS": str(public)}
    a = rig_with(**trusted)
    b = rig_with(**trusted)
    url = server.add("/s.tflite", TFLITE)
    untargeted = signed(desired_for(url, TFLITE, sequence=10), key)
    before = len(b.sink.docs("/reported"))
    b.desire(untargeted)
    error = wait_reported_after(b.sink, before, "failed")["update"]["error"]
    assert error == 'a signed desired state must name its "target": expected {"module_id": ...}'
    for_a = desired_for(url, TFLITE, sequence=11, target={"module_id": a.module.module_id})
    before = len(b.sink.docs("/reported"))
    b.desire(signed(for_a, key))
    error = wait_reported_after(b.sink, before, "failed")["update"]["error"]
    assert error == f"this desired state is for module {a.module.module_id!r}, not this one"
    state = b.store / "state.json"
    assert not state.exists() or "sequence" not in orjson.loads(state.read_bytes())
    a.desire(signed(for_a, key))
    wait_reported(a.sink, update_is("active", "1.1.0"))
    # Offline: a newer signed manifest installs, an older one is a replay.
    for version, sequence in (("3.0.0", 20), ("3.1.0", 15)):
        manifest = {
            "name": "har",
            "version": version,
            "format": "tflite",
            "sha256": hashlib.sha256(TFLITE).hexdigest(),
            "size": len(TFLITE),
            "labels": HAR_LABELS,
            "self_test": HAR_SELF_TEST,
            "sequence": sequence,
            "target": {"module_id": a.module.module_id},
        }
        (a.store / "inbox" / "har.tflite").write_bytes(TFLITE)
        (a.store / "inbox" / "manifest.json").write_bytes(orjson.dumps(signed(manifest, key)))
        if version == "3.0.0":
            wait_reported(a.sink, update_is("active", "3.0.0"))
    report = wait_reported(a.sink, update_is("failed", "3.1.0"))
    assert "sequence 15 is not higher than the last accepted 20" in report["update"]["error"]


# -- downloads: redirects, leftovers ----------------------------------------------------------


class Redirector:
    """An HTTP server answering every GET with a redirect to ``location``."""

    def __init__(self, location: str) -> None:
        target = location

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.tflite"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/model.tflite", "file:///etc/hostname"])
def test_a_redirect_to_a_scheme_that_is_not_allowed_is_refused(rig: Rig, location: str) -> None:
    redirector = Redirector(location)
    try:
        rig.desire(desired_for(redirector.url, TFLITE))
        report = wait_reported(rig.sink, update_is("failed", "1.1.0"))
        scheme = location.split(":", maxsplit=1)[0]
        assert f"redirected to a {scheme}:// URL" in report["update"]["error"]
    finally:
        redirector.close()


def test_a_superseded_download_leaves_no_partial_file(rig: Rig, server: ModelServer) -> None:
    stalled = server.add("/stall.tflite", TFLITE, stall_at=3000)
    rig.desire(desired_for(stalled, TFLITE, version="7.0.0"))
    parts = rig.store / "downloads"
    deadline = time.monotonic() + 10
    while not any(p.stat().st_size for p in parts.glob("*.part")):
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.01)
    rig.desire(desired_for(server.add("/ok.onnx", ONNX), ONNX, version="7.1.0"))
    wait_reported(rig.sink, update_is("active", "7.1.0"))
    server.release.set()
    assert list((rig.store / "downloads").iterdir()) == []


def test_at_start_downloads_keeps_only_the_newest_partial_file(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess]
) -> None:
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    modules.append(module)
    module.stop()
    downloads = module.state_dir / "downloads"
    for n, name in enumerate(["a" * 64 + ".part", "b" * 64 + ".part", "junk.tmp"]):
        (downloads / name).write_bytes(b"x" * 10)
        os.utime(downloads / name, (1_000_000 + n, 1_000_000 + n))
    (downloads / ("c" * 64 + ".part")).write_bytes(b"x")  # the newest
    module.start()
    assert sorted(p.name for p in downloads.iterdir()) == ["c" * 64 + ".part"]


def test_deploy_names_the_module_its_desired_state_is_for(
    tmp_path: Path,
) -> None:
    key, _ = keypair(tmp_path)
    pem = tmp_path / "signer.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    doc = build_desired(TFLITE_MODEL, "1.1.0", sign_key=pem, module_id="gw7")
    assert doc["target"] == {"module_id": "gw7"}


def test_without_allow_http_an_https_download_is_not_followed_to_http() -> None:
    from edgeinfer.errors import UpdateError
    from edgeinfer.updates.download import _Redirects

    strict = _Redirects(("https",))
    strict._check("https://a/m.onnx", "https://b/m.onnx")
    with pytest.raises(UpdateError, match=r"redirected to a http:// URL: expected https:// only"):
        strict._check("https://a/m.onnx", "http://b/m.onnx")
    _Redirects(("https", "http"))._check("https://a/m.onnx", "http://b/m.onnx")


def test_errors_never_show_credentials_inside_a_model_url(rig: Rig, server: ModelServer) -> None:
    url = server.add("/missing.onnx", b"").replace("http://", "http://user:s3cret@") + "x"
    rig.desire(desired_for(url, ONNX, version="8.0.0"))
    report = wait_reported(rig.sink, update_is("failed", "8.0.0"))
    assert "s3cret" not in report["update"]["error"]
    assert "http://***@127.0.0.1:" in report["update"]["error"]
