"""The real sensor recordings that ship with edgeinfer (BasicMotions test split)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Recordings:
    """Windows of [100 steps, 6 channels] (accelerometer xyz, gyroscope xyz) with their activity."""

    windows: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    label_names: tuple[str, ...]


def load_recordings() -> Recordings:
    ref = resources.files("edgeinfer") / "data" / "basicmotions_test.npz"
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as data:
        return Recordings(
            np.asarray(data["windows"], dtype=np.float32),
            np.asarray(data["labels"], dtype=np.int64),
            tuple(str(x) for x in data["label_names"]),
        )
