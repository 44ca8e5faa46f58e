"""Download a model: streaming, size-capped, with timeouts, retries and HTTP Range resume.

The file grows in ``downloads/<sha256>.part``; a broken connection or a restart
resumes from its length with ``Range: bytes=N-``. Nothing is handed on until
its size and sha256 match the desired state; then it is renamed
``<sha256>.model``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgeinfer.errors import UpdateError

log = logging.getLogger(__name__)

CHUNK = 65_536
Progress = Callable[[int, int], None]


class SupersededError(Exception):
    """A newer desired state superseded this download."""


class _TransientError(Exception):
    """A failure worth retrying: refused, reset, stalled, cut short."""


class Downloader:
    """Fetches model files into the store's ``downloads/`` directory."""

    def __init__(self, directory: Path, max_bytes: int, timeout_s: float, retries: int) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._timeout = timeout_s
        self._retries = retries

    def fetch(
        self, url: str, sha256: str, size: int, progress: Progress, cancelled: Callable[[], bool]
    ) -> Path:
        """Download until ``size`` bytes are there; returns the (unverified) file."""
        if size > self._max_bytes:
            raise UpdateError(
                f"model.size {size} exceeds updates.max_download_bytes {self._max_bytes}"
            )
        part = self._dir / f"{sha256}.part"
        for attempt in range(self._retries + 1):
            try:
                if urlsplit(url).scheme == "file":
                    self._copy_file(url, part, size, progress, cancelled)
                else:
                    self._http(url, part, size, progress, cancelled)
                break
            except _TransientError as exc:
                if attempt == self._retries:
                    raise UpdateError(
                        f"download of {url} failed after {attempt + 1} attempts: {exc}"
                    ) from None
                delay = min(8.0, 0.5 * 2**attempt)
                log.warning("download of %s interrupted (%s); resuming in %.1f s", url, exc, delay)
                if _sleep_unless(delay, cancelled):
                    raise SupersededError from None
        return part

    def verify(self, part: Path, url: str, sha256: str, size: int) -> Path:
        """Check size and sha256; returns ``<sha256>.model``, or removes the file and raises."""
        done = self._dir / f"{sha256}.model"
        got = part.stat().st_size
        if got != size:
            part.unlink(missing_ok=True)
            raise UpdateError(f"downloaded {got} bytes from {url}: expected {size} (model.size)")
        digest = _sha256(part)
        if digest != sha256:
            part.unlink(missing_ok=True)
            raise UpdateError(f"sha256 mismatch for {url}: got {digest}, expected {sha256}")
        part.replace(done)
        return done

    def discard(self, sha256: str) -> None:
        """Remove what a failed or finished update left in downloads/."""
        for suffix in (".part", ".model"):
            (self._dir / f"{sha256}{suffix}").unlink(missing_ok=True)

    def _copy_file(
        self, url: str, part: Path, size: int, progress: Progress, cancelled: Callable[[], bool]
    ) -> None:
        source = Path(unquote(urlsplit(url).path))
        try:
            actual = source.stat().st_size
        except OSError as exc:
            raise UpdateError(f"cannot read {url}: {exc.strerror}") from exc
        if actual > size:
            raise UpdateError(f"{url} is {actual} bytes, larger than the declared {size}")
        with source.open("rb") as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        progress(actual, size)
        if cancelled():
            raise SupersededError

    def _http(
        self, url: str, part: Path, size: int, progress: Progress, cancelled: Callable[[], bool]
    ) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have >= size:
            return
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise _TransientError(f"HTTP {exc.code} {exc.reason}") from None
            raise UpdateError(f"HTTP {exc.code} {exc.reason} for {url}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _TransientError(str(getattr(exc, "reason", exc))) from None
        with response:
            if response.status == 206 and have:
                mode = "ab"
                log.info("resuming %s at byte %d", url, have)
            else:
                mode, have = "wb", 0  # the server ignored Range: start over
            try:
                with part.open(mode) as out:
                    # read1: whatever has arrived; read(n) would sit on a stalled
                    # connection until n bytes came, losing a partial chunk.
                    while chunk := response.read1(CHUNK):
                        have += len(chunk)
                        if have > size:
                            raise UpdateError(
                                f"{url} sent more than the declared size {size} bytes (model.size)"
                            )
                        out.write(chunk)
                        # Flushed per chunk: a crash must leave on disk what was
                        # received, or the resume would start over.
                        out.flush()
                        progress(have, size)
                        if cancelled():
                            raise SupersededError
            except TimeoutError as exc:
                raise _TransientError(f"stalled: no data for {self._timeout} s") from exc
            except (http.client.IncompleteRead, ConnectionError, OSError) as exc:
                raise _TransientError(f"connection broke at byte {have}: {exc}") from exc
        if have < size:
            raise _TransientError(f"connection closed at byte {have} of {size}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sleep_unless(seconds: float, cancelled: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancelled():
            return True
        time.sleep(0.05)
    return False
