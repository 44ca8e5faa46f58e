"""A two-module cascade over a real mosquitto: a small model escalates what it is unsure of,
a bigger one answers it with the same id, within the budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeinfer.tools.broker import LocalBroker
from tests.support import Collector, ModuleProcess, Publisher
from tests.vision_support import (
    OCR_CLS,
    ORIENTATION,
    install,
    jpeg,
    ocr_cls_model,
    orientation_model,
    rotated,
    scenes,
)

BELOW, MARGIN, FRACTION, RATE = 0.8, 0.3, 0.25, 4.0


@pytest.mark.parametrize("declared", ["manifest", "config"])
def test_the_small_model_escalates_uncertain_images_and_the_big_one_answers_them_in_budget(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    declared: str,
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    big = ModuleProcess(
        broker.url, install(orientation_model(), tmp_path, "big", ORIENTATION), tmp_path
    )
    cascade = {
        "topic": f"{big.prefix}/sensors/escalated/{{topic}}",
        "below": BELOW,
        "margin": MARGIN,
        "max_fraction": FRACTION,
        "max_per_s": RATE,
    }
    if declared == "manifest":
        small_model = install(ocr_cls_model(), tmp_path, "small", {**OCR_CLS, "cascade": cascade})
        env = {}
    else:  # [cascade] in the configuration, the manifest without one
        small_model = install(ocr_cls_model(), tmp_path, "small", OCR_CLS)
        env = {f"EDGEINFER_CASCADE_{k.upper()}": str(v) for k, v in cascade.items()}
    small = ModuleProcess(broker.url, small_model, tmp_path, env=env)
    big.start(wait=False)
    small.start()
    big.wait_ready()
    images = [jpeg(img) for img, _ in rotated(scenes())]
    edge = collector([small.result_topic("cam"), small.errors_topic])
    answers = collector([f"{big.prefix}/inference/#", big.errors_topic])
    pub = publisher()
    started = time.monotonic()
    for payload in images:
        pub.send(small.topic("cam"), payload)
    assert len(edge.wait_for(len(images), timeout=30)) == len(images)
    elapsed = time.monotonic() - started
    results = edge.docs()
    escalated = [r for r in results if r.get("escalated")]
    sent = small.wait_metric('edgeinfer_escalations_total{outcome="sent"}', len(escalated))
    answers.wait_for(len(escalated), timeout=20)

    uncertain = [
        r
        for r in results
        if r["top"][0]["score"] < BELOW or r["top"][0]["score"] - r["top"][1]["score"] < MARGIN
    ]
    over = small.metric('edgeinfer_escalations_total{outcome="over_budget"}')
    assert sent == len(escalated) >= 1
    assert sent + over == len(uncertain) > sent  # the budget held some back
    assert sent <= math.floor(FRACTION * len(images))
    assert sent <= max(1.0, RATE) + RATE * elapsed
    assert all(r in uncertain for r in escalated)
    assert all(r["id"] is not None for r in escalated)
    assert all(r["id"] is None for r in results if not r.get("escalated"))

    by_id = {a["id"]: a for a in answers.docs("/inference/")}
    assert sorted(by_id) == sorted(r["id"] for r in escalated)
    for r in escalated:
        answer = by_id[r["id"]]
        assert answer["model"] == "big" and answer["label"] in ORIENTATION["labels"]
        assert answer["topic"] == f"{big.prefix}/sensors/escalated/{small.topic('cam')}"
    assert answers.docs("/errors") == []
    agreed = sum(by_id[r["id"]]["label"] == r["label"] for r in escalated)
    print(
        f"escalated {sent:.0f} of {len(images)} (uncertain {len(uncertain)}, over budget "
        f"{over:.0f}); the big model agreed with the edge on {agreed} of {len(escalated)}"
    )
