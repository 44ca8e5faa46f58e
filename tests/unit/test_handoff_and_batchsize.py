"""The engine's two small pieces: the hand-off to the serving thread and the batch size."""

from __future__ import annotations

import threading

from edgeinfer.pipeline.batchsize import BatchSizer
from edgeinfer.pipeline.handoff import Handoff


def test_an_offer_not_yet_taken_is_superseded_and_told_so() -> None:
    lock = threading.Lock()
    models: Handoff[str] = Handoff(lock)
    first = models.offer("1.0.0")
    second = models.offer("1.1.0")
    assert first.is_set() and not second.is_set()  # 1.0.0 will never be used
    with lock:
        taken = models.take()
    assert taken is not None and taken[0] == "1.1.0" and taken[1] is second
    assert not models.waiting
    with lock:
        assert models.take() is None


def test_a_batch_fits_decoding_and_running_in_the_step_budget() -> None:
    sizer = BatchSizer(max_batch=32, row_seconds=0.0, budget_s=0.25)
    assert sizer.limit() == 32  # not timed yet
    sizer.ran(0.05, 1)
    assert sizer.limit() == int(0.25 / 0.05)
    sizer.decoded(0.05)  # as long again to decode each
    assert sizer.limit() == int(0.25 / 0.1)
    sizer.ran(10.0, 1)  # a run far over the budget: one reading at a time, never none
    assert sizer.limit() == 1


def test_timings_are_smoothed_not_replaced() -> None:
    sizer = BatchSizer(max_batch=1000, row_seconds=0.001, budget_s=0.25)
    sizer.ran(0.011, 1)  # one slow run moves the estimate a fifth of the way
    assert abs(sizer.row_seconds - 0.003) < 1e-12


def test_a_swapped_in_model_keeps_what_decoding_costs_and_brings_its_own_timing() -> None:
    """Decoding's cost is the readings' (a camera's JPEGs), not the model's: kept across a
    swap, as the engine kept it before the sizer was a piece of its own."""
    sizer = BatchSizer(max_batch=32, row_seconds=0.01, budget_s=0.25)
    sizer.decoded(0.04)
    swapped = sizer.for_model(max_batch=1, row_seconds=0.002)
    assert (swapped.max_batch, swapped.row_seconds, swapped.budget_s) == (1, 0.002, 0.25)
    assert swapped.decode_seconds == 0.04
