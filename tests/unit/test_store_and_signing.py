"""The model store's crash safety and retention; desired-state parsing; signatures."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeinfer.errors import UpdateError
from edgeinfer.manifest.document import Manifest
from edgeinfer.updates.desired import parse_desired
from edgeinfer.updates.signing import SequenceVerifier, SignatureVerifier, canonical, sign
from edgeinfer.updates.store import ModelStore, StoreError
from tests.support import ONNX_MODEL


def store_with(tmp_path: Path, *versions: str) -> ModelStore:
    store = ModelStore(tmp_path / "state")
    for version in versions:
        store.activate(store.install(ONNX_MODEL, Manifest("har", version, format="onnx")))
    return store


def test_activate_points_previous_at_the_old_current_with_relative_links(tmp_path: Path) -> None:
    store = store_with(tmp_path, "1.0.0", "2.0.0")
    assert os.readlink(store.root / "current") == "models/har/2.0.0"
    assert os.readlink(store.root / "previous") == "models/har/1.0.0"
    assert (store.root / "current" / "model.onnx").read_bytes() == ONNX_MODEL.read_bytes()


def test_a_crash_between_the_two_link_writes_leaves_a_consistent_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_with(tmp_path, "1.0.0", "2.0.0")
    v3 = store.install(ONNX_MODEL, Manifest("har", "3.0.0", format="onnx"))
    real_replace = os.replace
    calls = []

    def crash_on_second(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        store.activate(v3)
    monkeypatch.undo()
    # previous moved on, current not yet: both still name installed versions.
    assert os.readlink(store.root / "previous") == "models/har/2.0.0"
    assert os.readlink(store.root / "current") == "models/har/2.0.0"
    reopened = ModelStore(store.root)
    actions = reopened.recover()
    assert len(actions) == 1
    assert actions[0].startswith("removed half-made link .link-current-")
    assert reopened.link("current") is not None
    assert not list(store.root.glob(".link-*"))


def test_recover_removes_half_made_links_and_installs_and_repairs_a_dangling_current(
    tmp_path: Path,
) -> None:
    store = store_with(tmp_path, "1.0.0", "2.0.0")
    os.symlink("models/har/9", store.root / ".link-current-deadbeef")
    (store.models / "har" / ".staging-cafe").mkdir()
    (store.models / "har" / ".staging-cafe" / "model.onnx").write_bytes(b"half")
    os.remove(store.root / "current")
    os.symlink("models/har/7.7.7", store.root / "current")
    assert ModelStore(store.root).recover() == [
        "removed half-made link .link-current-deadbeef",
        "removed unfinished install models/har/.staging-cafe",
        "current was dangling: back to previous 1.0.0",
    ]
    assert os.readlink(store.root / "current") == "models/har/1.0.0"
    assert not list(store.root.glob(".link-*"))


def test_prune_keeps_the_newest_and_never_current_or_previous(tmp_path: Path) -> None:
    store = store_with(tmp_path, "1", "2", "3", "4")
    store.roll_back_to(store.get("har", "1"), failed=store.get("har", "4"))
    removed = store.prune(keep=3)
    assert [v.version for v in removed] == ["2"]
    assert sorted(v.version for v in store.versions()) == ["1", "3", "4"]
    assert store.is_failed("har", "4")


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "a..b", "", ".hidden", "x" * 65, 7])
def test_names_and_versions_that_could_escape_the_store_are_refused(
    tmp_path: Path, bad: object
) -> None:
    store = ModelStore(tmp_path / "state")
    with pytest.raises(StoreError, match="is not allowed: expected 1-64 letters"):
        store.install(ONNX_MODEL, Manifest("har", bad, format="onnx"))  # type: ignore[arg-type]
    assert list(store.models.iterdir()) == []


def test_the_desired_parser_refuses_what_it_does_not_know() -> None:
    with pytest.raises(UpdateError, match=r'"model" has unknown fields \[\'path\'\]'):
        parse_desired(b'{"model": {"name": "a", "version": "1", "path": "/x"}}', ("https",))
    with pytest.raises(UpdateError, match=r"model\.sha256 = None: expected 64 lowercase hex"):
        parse_desired(b'{"model": {"name": "a", "version": "1", "url": "https://h/m"}}', ("https",))
    with pytest.raises(UpdateError, match="has scheme 'http': expected one of https, file"):
        parse_desired(
            orjson.dumps(
                {
                    "model": {
                        "name": "a",
                        "version": "1",
                        "url": "http://h/m",
                        "sha256": "a" * 64,
                        "size": 1,
                    }
                }
            ),
            ("https", "file"),
        )
    with pytest.raises(UpdateError, match="desired state is 70000 bytes: expected at most 65536"):
        parse_desired(b" " * 70000, ("https",))


def test_signatures_cover_the_canonical_document_without_the_signature() -> None:
    key = Ed25519PrivateKey.generate()
    doc = {"sequence": 3, "model": {"version": "1", "name": "a"}}
    assert canonical(doc) == b'{"model":{"name":"a","version":"1"},"sequence":3}'
    signed = doc | {"signature": sign(doc, key)}
    state = parse_desired(orjson.dumps(signed), ("https",))
    SignatureVerifier([key.public_key()]).verify(state)
    with pytest.raises(UpdateError, match="bad signature"):
        SignatureVerifier([Ed25519PrivateKey.generate().public_key()]).verify(state)


def test_the_sequence_must_grow_but_the_same_document_may_come_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "state")
    guard = SequenceVerifier(store)
    first = parse_desired(b'{"model": {"name": "a", "version": "1"}, "sequence": 5}', ())
    guard.verify(first)
    guard.accept(first)
    guard.verify(first)  # redelivered after a restart: fine
    other = parse_desired(b'{"model": {"name": "a", "version": "2"}, "sequence": 5}', ())
    with pytest.raises(UpdateError, match="sequence 5 is not higher than the last accepted 5"):
        guard.verify(other)
    assert ModelStore(store.root).read_state()["sequence"]["value"] == 5


def test_probation_judges_error_rate_only_after_enough_readings_and_latency_p95() -> None:
    from edgeinfer.model.loaded import LoadedModel
    from edgeinfer.pipeline.engine import BatchOutcome
    from edgeinfer.runtimes.fake import sum_model
    from edgeinfer.updates.probation import Limits, ProbationMonitor

    watched = LoadedModel(sum_model(), Manifest("m", "2"), Path("m"), "")
    other = LoadedModel(sum_model(), Manifest("m", "1"), Path("m"), "")
    monitor = ProbationMonitor(watched, Limits(0.05, 0.0, min_readings=20))
    monitor.observe(BatchOutcome(watched, 10, 0, 5, 0.001))
    assert monitor.verdict() is None  # 10 readings: too few to judge
    monitor.observe(BatchOutcome(other, 100, 100, 0, 0.001))  # not the watched model
    monitor.observe(BatchOutcome(watched, 10, 0, 0, 0.001))
    assert monitor.verdict() == (
        "probation: 5 of 20 readings failed or gave NaN/inf (25.0%): expected at most 5.0%"
    )
    slow = ProbationMonitor(watched, Limits(0.05, 2.0, min_readings=1))
    for _ in range(10):
        slow.observe(BatchOutcome(watched, 4, 0, 0, 0.003))
    assert slow.verdict() == "probation: p95 inference latency 3.00 ms: expected at most 2.0 ms"
