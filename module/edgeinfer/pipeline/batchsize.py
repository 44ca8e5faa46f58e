"""How many readings one batch takes: as many as decode and run within a step.

A turn of the serving loop answers one batch, and the network waits meanwhile
(the MQTT keepalive included): a batch is sized so that decoding it and running
it fit in the step budget (``pipeline.step_budget_ms``), from smoothed timings of
both, and never more than ``pipeline.max_batch`` (1 for a model that cannot batch).
"""

from __future__ import annotations

#: The weight of the newest timing in the smoothed one.
_NEWEST = 0.2


def smoothed(previous: float, newest: float) -> float:
    """An exponential moving average (``previous`` 0: none yet, ``newest`` alone)."""
    return newest if not previous else (1 - _NEWEST) * previous + _NEWEST * newest


class BatchSizer:
    """The batch limit of the model serving, from its timings."""

    def __init__(self, max_batch: int, row_seconds: float, budget_s: float) -> None:
        """``row_seconds``: a run's time per row measured at admission (0: not timed);
        ``budget_s``: what one batch may take, decoding and running."""
        self.max_batch = max_batch
        self.budget_s = budget_s
        self.row_seconds = row_seconds
        self.decode_seconds = 0.0  # a reading's decoding, smoothed (images: milliseconds)

    def for_model(self, max_batch: int, row_seconds: float) -> BatchSizer:
        """The sizer of another model (a swap): its own limit and timing, and decoding's
        cost kept (it is the readings', not the model's)."""
        sizer = BatchSizer(max_batch, row_seconds, self.budget_s)
        sizer.decode_seconds = self.decode_seconds
        return sizer

    def ran(self, seconds: float, rows: int) -> None:
        """A run of ``rows`` rows took ``seconds``."""
        self.row_seconds = smoothed(self.row_seconds, seconds / max(1, rows))

    def decoded(self, seconds_each: float) -> None:
        """A batch's readings took ``seconds_each`` to decode."""
        self.decode_seconds = smoothed(self.decode_seconds, seconds_each)

    def limit(self) -> int:
        """How many readings the next batch takes."""
        if self.row_seconds <= 0:
            return self.max_batch  # not timed yet (admission times every model it serves)
        per_reading = self.row_seconds + self.decode_seconds  # a batch is decoded, then run
        return max(1, min(self.max_batch, int(self.budget_s / per_reading)))
