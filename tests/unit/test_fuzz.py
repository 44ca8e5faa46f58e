"""A bounded fuzz run (atheris) of the decoder and the .npy reader, seeded with real readings.

The long run for the closing note: ``python tests/fuzz/fuzz_decode.py -atheris_runs=N DIR``.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson

from tests.support import ROOT

RUNS = 30_000


def seeds(corpus: Path) -> None:
    """Valid and nearly valid readings for each decoder (first byte picks the decoder)."""
    docs = [
        (0, {"id": 1, "features": [[1.5, 2, 3], [4, 5, 6]]}),
        (0, [1.0, 2.0, 3.0]),
        (1, {"inputs": {"k": [[1, 2]]}, "ts": 3}),
        (2, {"features": [1, 2, 3, 255]}),
        (3, {"inputs": {"x": [[0.5, 1]], "n": [[7]]}}),
    ]
    for n, (which, doc) in enumerate(docs):
        (corpus / f"json{n}").write_bytes(bytes([which]) + orjson.dumps(doc))
    for n, arr in enumerate([np.zeros((2, 3), np.float32), np.arange(8, dtype=np.int32)]):
        buf = io.BytesIO()
        np.save(buf, arr)
        (corpus / f"npy{n}").write_bytes(bytes([0]) + buf.getvalue())
        (corpus / f"header{n}").write_bytes(bytes([4]) + buf.getvalue()[6:])


def test_a_bounded_fuzz_run_finds_no_exception_but_reading_errors(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds(corpus)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz" / "fuzz_decode.py"),
            f"-atheris_runs={RUNS}",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {RUNS} " in done.stderr
