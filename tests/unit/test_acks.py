"""Ordered, epoch-scoped acknowledgements."""

from __future__ import annotations

from edgeinfer.mqtt.acks import AckTracker


def test_acks_leave_in_arrival_order_even_when_answers_complete_out_of_order() -> None:
    sent: list[int] = []
    tracker = AckTracker(lambda mid, qos: sent.append(mid))
    a, b, c = (tracker.register(mid, 1) for mid in (11, 12, 13))
    tracker.complete(c)
    tracker.complete(b)
    assert sent == []
    assert tracker.unacked == 3
    tracker.complete(a)
    assert sent == [11, 12, 13]
    assert tracker.unacked == 0


def test_qos0_readings_keep_their_place_but_are_never_acknowledged() -> None:
    sent: list[int] = []
    tracker = AckTracker(lambda mid, qos: sent.append(mid))
    first = tracker.register(0, 0)
    second = tracker.register(5, 1)
    tracker.complete(second)
    assert sent == []
    tracker.complete(first)
    assert sent == [5]


def test_tickets_from_a_lost_connection_are_never_acknowledged() -> None:
    sent: list[int] = []
    tracker = AckTracker(lambda mid, qos: sent.append(mid))
    old = tracker.register(1, 1)
    tracker.new_epoch()
    fresh = tracker.register(1, 1)
    tracker.complete(old)
    assert sent == []
    tracker.complete(fresh)
    assert sent == [1]
