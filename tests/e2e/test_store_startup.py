"""What ``--model`` (``model.path``) does to the store at start, run as a real process.

A model becomes the store's ``current`` only once it loaded and passed its
self-test; a model refused at start leaves the store as it was, and says so
without calling a valid configuration bad. On a store already in use, a file
other than the one last given is installed as a new version through the same
gate as an update; the same file again changes nothing, so updates survive
restarts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgeinfer.manifest.document import Manifest, load_manifest
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from edgeinfer.updates.store import ModelStore
from tests.support import ONNX_MODEL, TFLITE_MODEL, Collector, ModuleProcess, Publisher, unique
from tests.updates_support import JUNK, UPDATE_ENV

HAR_ONNX_MANIFEST: dict[str, Any] = orjson.loads((ONNX_MODEL.parent / "manifest.json").read_bytes())
HAR_TFLITE_MANIFEST: dict[str, Any] = orjson.loads(
    (TFLITE_MODEL.parent / "manifest.json").read_bytes()
)


def custom_op_tflite() -> bytes:
    """The HAR TFLite model with its last operator (the softmax) turned into a custom op
    that no runtime here resolves: it parses, and is refused when the interpreter prepares."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    source = TFLITE_MODEL.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(source), 0)
    code = model.operatorCodes[-1]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = b"EdgeinferNoSuchOp"
    builder = flatbuffers.Builder(len(source) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def model_dir(
    tmp: Path, name: str, body: bytes, suffix: str, manifest: dict[str, Any] | None
) -> Path:
    """``body`` as ``<tmp>/<name>/model.<suffix>``, with ``manifest`` beside it when given."""
    folder = tmp / name
    folder.mkdir()
    path = folder / f"model.{suffix}"
    path.write_bytes(body)
    if manifest is not None:
        (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    return path


def with_golden_off(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` whose self-test expects an answer the model never gives."""
    test = dict(manifest["self_test"])
    test["golden"] = {"probabilities": [[0.0, 0.0, 0.0, 1.0]]}
    return {**manifest, "self_test": test}


def bad_models(tmp: Path) -> list[tuple[Path, str]]:
    """(a model start-up must refuse, a part of the reason the refusal must give)."""
    return [
        (
            model_dir(tmp, "custom", custom_op_tflite(), "tflite", None),
            "unresolved custom op: EdgeinferNoSuchOp",
        ),
        (
            model_dir(
                tmp,
                "selftest",
                ONNX_MODEL.read_bytes(),
                "onnx",
                with_golden_off({**HAR_ONNX_MANIFEST, "version": "2.0.0"}),
            ),
            "self-test: output 'probabilities' differs from golden",
        ),
        (model_dir(tmp, "corrupt", JUNK, "onnx", None), "ONNX Runtime cannot load it"),
        (model_dir(tmp, "text", b"hello\n", "onnx", None), "not a model file"),
    ]


def start_refused(
    broker: LocalBroker, model: Path, tmp: Path, mid: str, timeout: float = 40.0
) -> tuple[int | None, str]:
    """Run the module as ModuleProcess would, expecting it to exit: (exit code, stderr).

    The exit code is None when the module kept running (it ignored ``model``).
    """
    module = ModuleProcess(broker.url, model, tmp, module_id=mid, env=UPDATE_ENV)
    proc = subprocess.Popen(
        module.cmd, env=module.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, err
    return proc.returncode, err


def update_of_har(tmp: Path) -> tuple[Path, Manifest]:
    """The TFLite sample model as har 1.1.0: what a desired state would have installed."""
    updated = tmp / "updated.tflite"
    shutil.copyfile(TFLITE_MODEL, updated)
    manifest = load_manifest(TFLITE_MODEL)
    return updated, dataclasses.replace(manifest, version="1.1.0", format="tflite")


def layout(state: Path) -> dict[str, Any]:
    """What the store holds: its versions and where its links point."""
    models = state / "models"
    versions = sorted(
        f"{n.name}/{v.name}"
        for n in (models.iterdir() if models.is_dir() else [])
        if not n.name.startswith(".")
        for v in n.iterdir()
    )
    links = {
        which: os.readlink(state / which) if (state / which).is_symlink() else None
        for which in ("current", "previous")
    }
    return {"versions": versions, **links}


def both_with(current: str, previous: str) -> dict[str, Any]:
    """The layout of a store holding har 1.0.0 and 1.1.0."""
    return {
        "versions": ["har/1.0.0", "har/1.1.0"],
        "current": f"models/har/{current}",
        "previous": f"models/har/{previous}",
    }


def answer(broker: LocalBroker, module: ModuleProcess, recordings: Recordings) -> dict[str, Any]:
    """The result the running module gives for one reading sent over MQTT."""
    sink = Collector(broker.url, [module.result_topic("+")])
    pub = Publisher(broker.url)
    rid = unique("r")
    pub.send(module.topic("imu"), {"id": rid, "features": recordings.windows[3].tolist()})
    pub.flush()
    deadline = time.monotonic() + 10
    found: list[dict[str, Any]] = []
    while not found and time.monotonic() < deadline:
        found = [d for d in sink.docs() if d.get("id") == rid]
        time.sleep(0.02)
    sink.close()
    pub.close()
    assert found, f"no answer from {module.module_id}: {module.log()}"
    assert found[0]["label"] == recordings.label_names[recordings.labels[3]]
    return found[0]


def serve(
    broker: LocalBroker, model: Path, tmp: Path, mid: str, modules: list[ModuleProcess]
) -> ModuleProcess:
    module = ModuleProcess(broker.url, model, tmp, module_id=mid, env=UPDATE_ENV)
    modules.append(module)
    return module.start()


def check_refusal(code: int | None, err: str, model: Path, reason: str) -> str:
    """The refusal's last line, once checked: exit 2, naming the file and the reason."""
    assert code is not None, f"the module kept running with {model}: {err[-2000:]}"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2, err[-2000:]
    assert "bad configuration" not in err, err[-2000:]
    assert last.startswith(f"edgeinfer: model refused: {str(model)!r}"), last
    assert reason in err, err[-2000:]
    return last


def test_a_model_refused_at_start_leaves_a_new_store_empty_and_the_next_start_works(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess], recordings: Recordings
) -> None:
    mid = unique("m")
    state = tmp_path / f"state-{mid}"
    for bad, reason in bad_models(tmp_path):
        code, err = start_refused(broker, bad, tmp_path, mid)
        last = check_refusal(code, err, bad, reason)
        assert "the store is unchanged: it holds no model yet" in last, last
        assert layout(state) == {"versions": [], "current": None, "previous": None}, bad
    module = serve(broker, ONNX_MODEL, tmp_path, mid, modules)
    assert answer(broker, module, recordings)["version"] == "1.0.0"
    assert layout(state) == {
        "versions": ["har/1.0.0"],
        "current": "models/har/1.0.0",
        "previous": None,
    }


def test_a_model_refused_on_a_used_store_leaves_its_current_as_it_was(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess], recordings: Recordings
) -> None:
    mid = unique("m")
    state = tmp_path / f"state-{mid}"
    serve(broker, ONNX_MODEL, tmp_path, mid, modules).stop()
    before = layout(state)
    assert before["current"] == "models/har/1.0.0"
    for bad, reason in bad_models(tmp_path):
        code, err = start_refused(broker, bad, tmp_path, mid)
        last = check_refusal(code, err, bad, reason)
        assert "the store is unchanged: its current is har 1.0.0" in last, last
        assert layout(state) == before, bad
    module = serve(broker, ONNX_MODEL, tmp_path, mid, modules)
    assert answer(broker, module, recordings)["version"] == "1.0.0"


def test_a_store_a_refused_model_was_left_current_in_starts_with_a_good_model(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess], recordings: Recordings
) -> None:
    """A state directory from a release that copied a model in before refusing it."""
    mid = unique("m")
    state = tmp_path / f"state-{mid}"
    bad = model_dir(tmp_path, "custom", custom_op_tflite(), "tflite", None)
    store = ModelStore(state)
    store.activate(store.install(bad, Manifest("model", "unversioned", format="tflite")))
    module = serve(broker, ONNX_MODEL, tmp_path, mid, modules)
    assert answer(broker, module, recordings)["version"] == "1.0.0"
    assert layout(state)["current"] == "models/har/1.0.0"


def test_another_model_on_a_used_store_is_installed_as_a_new_version_the_same_one_is_not(
    collector: Callable[..., Collector],
    broker: LocalBroker,
    tmp_path: Path,
    modules: list[ModuleProcess],
    recordings: Recordings,
) -> None:
    mid = unique("m")
    state = tmp_path / f"state-{mid}"
    reported = collector([f"edgeinfer/{mid}/reported"])
    first = serve(broker, ONNX_MODEL, tmp_path, mid, modules)
    assert answer(broker, first, recordings)["version"] == "1.0.0"
    first.stop()
    newer = model_dir(
        tmp_path,
        "newer",
        TFLITE_MODEL.read_bytes(),
        "tflite",
        {**HAR_TFLITE_MANIFEST, "version": "1.1.0"},
    )
    second = serve(broker, newer, tmp_path, mid, modules)
    assert answer(broker, second, recordings)["version"] == "1.1.0"
    assert layout(state) == both_with("1.1.0", "1.0.0")
    assert (state / "models/har/1.1.0/model.tflite").read_bytes() == TFLITE_MODEL.read_bytes()
    assert load_manifest(state / "models/har/1.1.0/model.tflite").source == str(newer.resolve())
    # Like any update: on probation (updates.probation_s = 0.5 here), then active.
    deadline = time.monotonic() + 15
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        docs = reported.docs()
        if any(d["update"]["state"] == "active" for d in docs):
            break
        time.sleep(0.05)
    done = next(d for d in docs if d["update"]["state"] == "active")
    assert done["update"]["target"]["version"] == "1.1.0"
    assert done["model"]["version"] == "1.1.0"
    assert {(v["version"], v["current"], v["previous"]) for v in done["versions"]} == {
        ("1.0.0", False, True),
        ("1.1.0", True, False),
    }
    second.stop()
    # The same file again: nothing changes (no new version, no probation).
    third = serve(broker, newer, tmp_path, mid, modules)
    assert answer(broker, third, recordings)["version"] == "1.1.0"
    assert layout(state)["versions"] == ["har/1.0.0", "har/1.1.0"]
    assert layout(state)["current"] == "models/har/1.1.0"
    third.stop()
    # The first file again: the version the store already holds becomes current.
    fourth = serve(broker, ONNX_MODEL, tmp_path, mid, modules)
    assert answer(broker, fourth, recordings)["version"] == "1.0.0"
    assert layout(state) == both_with("1.0.0", "1.1.0")


def test_another_build_under_a_version_the_store_holds_is_refused_naming_both(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess]
) -> None:
    """The TFLite and ONNX sample models are both har 1.0.0: a version names one build."""
    mid = unique("m")
    state = tmp_path / f"state-{mid}"
    serve(broker, ONNX_MODEL, tmp_path, mid, modules).stop()
    before = layout(state)
    code, err = start_refused(broker, TFLITE_MODEL, tmp_path, mid)
    last = check_refusal(code, err, TFLITE_MODEL, "har 1.0.0 is already installed with sha256")
    assert "a different build needs a new version" in last, last
    assert layout(state) == before


def test_a_store_seeded_before_model_path_was_recorded_keeps_serving_its_update(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess], recordings: Recordings
) -> None:
    """An earlier release seeded the store and an update followed; the seed is not re-installed."""
    mid = unique("m")
    state = tmp_path / f"state-{mid}"
    store = ModelStore(state)
    store.activate(store.install(ONNX_MODEL, Manifest("har", "1.0.0", format="onnx")))
    store.activate(store.install(*update_of_har(tmp_path)))
    module = serve(broker, ONNX_MODEL, tmp_path, mid, modules)
    assert answer(broker, module, recordings)["version"] == "1.1.0"
    assert layout(state)["current"] == "models/har/1.1.0"


@pytest.mark.parametrize("where", ["flag", "config"])
def test_an_unchanged_model_path_serves_the_stores_current_after_an_update(
    broker: LocalBroker,
    tmp_path: Path,
    modules: list[ModuleProcess],
    recordings: Recordings,
    where: str,
) -> None:
    """``model.path`` stays in a deployment's configuration: an update survives restarts."""
    mid = unique("m")
    state = tmp_path / f"state-{mid}"
    first = serve(broker, ONNX_MODEL, tmp_path, mid, modules)
    first.stop()
    store = ModelStore(state)
    # What an update leaves behind (tests/e2e/test_updates.py drives the real one).
    store.activate(store.install(*update_of_har(tmp_path)))
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path, module_id=mid, env=UPDATE_ENV)
    if where == "config":
        module.cmd.remove("--model")
        module.cmd.remove(str(ONNX_MODEL))
        module.env["EDGEINFER_MODEL_PATH"] = str(ONNX_MODEL)
    modules.append(module)
    module.start()
    assert answer(broker, module, recordings)["version"] == "1.1.0"
    assert layout(state) == both_with("1.1.0", "1.0.0")
