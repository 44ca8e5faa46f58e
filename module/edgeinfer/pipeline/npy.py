"""``.npy`` and ``.npz`` payloads, read without pickle and without trusting the header.

The header declares a shape and a dtype; the array is only made when the
payload carries exactly the bytes they imply, so a header that declares a
terabyte costs nothing (numpy.load would try to allocate it).
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile

import numpy as np

from edgeinfer.errors import ReadingError
from edgeinfer.runtimes.base import Array

MAGIC = b"\x93NUMPY"
_EXPECTED = "expected a whole array saved with numpy.save"
_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def load_npy(payload: bytes) -> Array:
    """The array in ``payload``; raises ReadingError ``bad_npy`` saying what is wrong."""
    stream = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(stream)
        reader = _READERS.get(version)
        if reader is None:
            raise ValueError(f"format version {version[0]}.{version[1]} (1.0 or 2.0 expected)")
        # numpy parses the header as Python literals: a crafted one makes the
        # parser warn on stderr, which would break the JSON log lines.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape, fortran, dtype = reader(stream)
    except Exception as exc:  # numpy's header parser raises many kinds; all mean a bad header
        raise ReadingError(
            "bad_npy",
            f"cannot read .npy payload ({exc}): expected a numeric array saved with "
            "numpy.save, without pickle",
        ) from exc
    if dtype.hasobject:
        raise ReadingError(
            "bad_npy", f".npy array of Python objects ({dtype}): expected numbers, without pickle"
        )
    count = math.prod(shape)
    declared = count * dtype.itemsize
    carried = len(payload) - stream.tell()
    if declared != carried:
        raise ReadingError(
            "bad_npy",
            f".npy header declares shape {list(shape)} of {dtype.name} ({declared} bytes) "
            f"but the payload carries {carried}: {_EXPECTED}",
        )
    flat = np.frombuffer(payload, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP = b"PK\x05\x06"  # numpy.savez of no arrays: a model without inputs


def load_npz(payload: bytes, max_bytes: int) -> dict[str, Array]:
    """The arrays of an ``.npz`` payload (``numpy.savez``), by name, without pickle.

    Compressed members are sized from the zip directory before anything is
    inflated: more than ``max_bytes`` in all is refused (a zip bomb stops there).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ReadingError("bad_npy", f"cannot read .npz payload ({exc}): {_EXPECTED_NPZ}") from exc
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise ReadingError(
            "oversize",
            f".npz payload unpacks to {total} bytes: expected at most {max_bytes} "
            "(pipeline.max_payload_bytes)",
        )
    arrays: dict[str, Array] = {}
    for member in members:
        name = member.filename.removesuffix(".npy")
        try:
            data = archive.read(member)
        except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
            raise ReadingError("bad_npy", f"cannot read {member.filename!r} ({exc})") from exc
        if not data.startswith(MAGIC):
            raise ReadingError("bad_npy", f"{member.filename!r} is not .npy: {_EXPECTED_NPZ}")
        arrays[name] = load_npy(data)
    return arrays


_EXPECTED_NPZ = "expected arrays saved with numpy.savez, one per input name"
