"""Coverage-guided fuzzing (atheris) of the decoder and the .npy reader.

    python tests/fuzz/fuzz_decode.py -atheris_runs=1000000 [corpus_dir]

Any exception other than ReadingError is a crash: atheris stops and prints the input.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    from edgeinfer.errors import ReadingError
    from edgeinfer.pipeline.decode import Decoder
    from edgeinfer.pipeline.npy import load_npy
    from edgeinfer.runtimes.base import TensorSpec

DECODERS = [
    Decoder((TensorSpec("x", np.dtype(np.float32), (None, 3)),), 65_536),
    Decoder((TensorSpec("k", np.dtype(np.int32), ("batch", 2)),), 65_536),
    Decoder((TensorSpec("u", np.dtype(np.uint8), (1, 4)),), 65_536),
    Decoder(
        (
            TensorSpec("x", np.dtype(np.float16), (None, 2)),
            TensorSpec("n", np.dtype(np.int64), (None, 1)),
        ),
        65_536,
    ),
]


def one_input(data: bytes) -> None:
    if not data:
        return
    which, payload = data[0], data[1:]
    try:
        if which % 5 == 4:
            load_npy(b"\x93NUMPY" + payload)
        else:
            DECODERS[which % 5].decode(payload)
    except ReadingError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
