"""Download a model: streaming, size-capped, with timeouts, retries and HTTP Range resume.

The file grows in ``downloads/<sha256>.part``; a broken connection or a restart
resumes from its length with ``Range: bytes=N-``. Nothing is handed on until
its size and sha256 match the desired state; then it is renamed
``<sha256>.model``.

``file://`` URLs are off unless ``updates.file_roots`` names directories they
may point into (after resolving links), and must name a regular file: a
desired state must not read ``/etc/shadow`` or ``/dev/zero``. Errors never
quote the size or digest of what was found, only what was declared.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import ssl
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urljoin, urlsplit

from edgeinfer.errors import UpdateError

log = logging.getLogger(__name__)

CHUNK = 65_536
Progress = Callable[[int, int], None]


class SupersededError(Exception):
    """A newer desired state superseded this download."""

    def __init__(self, reason: str = "superseded by a newer desired state") -> None:
        super().__init__(reason)


class _TransientError(Exception):
    """A failure worth retrying: refused, reset, stalled, cut short."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to schemes a desired state may name itself."""

    def __init__(self, schemes: tuple[str, ...]) -> None:
        self._schemes = schemes

    def http_error_302(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any
    ) -> Any:
        # Checked before urllib's own rule, which refuses file:// with a bare HTTPError.
        location = headers.get("location") or headers.get("uri")
        if location:
            self._check(req.full_url, urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def _check(self, url: str, newurl: str) -> None:
        scheme = urlsplit(newurl).scheme
        if scheme not in self._schemes:
            allowed = ", ".join(f"{s}://" for s in self._schemes)
            raise UpdateError(
                f"{shown(url)} redirected to a {scheme}:// URL: expected {allowed} only"
            )

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        self._check(req.full_url, newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Downloader:
    """Fetches model files into the store's ``downloads/`` directory."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        timeout_s: float,
        retries: int,
        http_schemes: tuple[str, ...] = ("https",),
        file_roots: tuple[str, ...] = (),
        ca_file: str = "",
    ) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._timeout = timeout_s
        self._retries = retries
        self._roots = tuple(Path(root).resolve() for root in file_roots)
        context = ssl.create_default_context(cafile=ca_file or None)
        self._opener = urllib.request.build_opener(
            _Redirects(http_schemes), urllib.request.HTTPSHandler(context=context)
        )

    def check_url(self, url: str) -> None:
        """Refuse a ``file://`` URL that is off, outside the roots, or not a regular file."""
        if urlsplit(url).scheme == "file":
            self._local_file(url)

    def fetch(
        self,
        url: str,
        sha256: str,
        size: int,
        progress: Progress,
        cancelled: Callable[[], bool],
        local: Path | None = None,
    ) -> Path:
        """Download until ``size`` bytes are there; returns the (unverified) file.

        ``local`` copies that file instead (an inbox drop: the module's own
        directory, not a URL a desired state chose).
        """
        if size > self._max_bytes:
            raise UpdateError(
                f"model.size {size} exceeds updates.max_download_bytes {self._max_bytes}"
            )
        part = self._dir / f"{sha256}.part"
        for attempt in range(self._retries + 1):
            try:
                if local is not None:
                    self._copy(local, url, part, size, progress, cancelled)
                elif urlsplit(url).scheme == "file":
                    self._copy(self._local_file(url), url, part, size, progress, cancelled)
                else:
                    self._http(url, part, size, progress, cancelled)
                break
            except _TransientError as exc:
                if attempt == self._retries:
                    raise UpdateError(
                        f"download of {shown(url)} failed after {attempt + 1} attempts: {exc}"
                    ) from None
                delay = min(8.0, 0.5 * 2**attempt)
                log.warning(
                    "download of %s interrupted (%s); resuming in %.1f s", shown(url), exc, delay
                )
                if _sleep_unless(delay, cancelled):
                    raise SupersededError from None
        return part

    def verify(self, part: Path, url: str, sha256: str, size: int) -> Path:
        """Check size and sha256; returns ``<sha256>.model``, or removes the file and raises."""
        done = self._dir / f"{sha256}.model"
        if part.stat().st_size != size:
            part.unlink(missing_ok=True)
            raise UpdateError(
                f"the file from {shown(url)} is not the declared {size} bytes (model.size)"
            )
        if _sha256(part) != sha256:
            part.unlink(missing_ok=True)
            raise UpdateError(
                f"sha256 mismatch for {shown(url)}: the file is not the declared {sha256}"
            )
        part.replace(done)
        return done

    def discard(self, sha256: str) -> None:
        """Remove what a failed or finished update left in downloads/."""
        for suffix in (".part", ".model"):
            (self._dir / f"{sha256}{suffix}").unlink(missing_ok=True)

    def keep_only(self, sha256: str | None) -> None:
        """Remove every partial download but ``sha256``'s (a newer document was accepted)."""
        for path in self._dir.iterdir():
            if path.is_file() and path.name != f"{sha256}.part":
                path.unlink(missing_ok=True)

    # -- file:// -----------------------------------------------------------------

    def _local_file(self, url: str) -> Path:
        if not self._roots:
            raise UpdateError(
                f"model.url {url!r}: file:// URLs are off (set updates.file_roots to the "
                "directories models may be installed from)"
            )
        try:
            path = Path(unquote(urlsplit(url).path)).resolve(strict=True)
        except (OSError, RuntimeError):
            raise UpdateError(f"model.url {url!r} cannot be read") from None
        if not any(path.is_relative_to(root) for root in self._roots):
            raise UpdateError(f"model.url {url!r} is outside updates.file_roots")
        if not stat.S_ISREG(path.stat().st_mode):
            raise UpdateError(f"model.url {url!r} is not a regular file")
        return path

    def _copy(
        self,
        source: Path,
        url: str,
        part: Path,
        size: int,
        progress: Progress,
        cancelled: Callable[[], bool],
    ) -> None:
        copied = 0
        try:
            with source.open("rb") as src, part.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    copied += len(chunk)
                    if copied > size:
                        raise UpdateError(
                            f"{shown(url)} is not the declared {size} bytes (model.size)"
                        )
                    _write(dst, part, chunk)
                    progress(copied, size)
                    if cancelled():
                        raise SupersededError
        except OSError as exc:
            raise UpdateError(f"model.url {url!r} cannot be read") from exc

    # -- http(s):// -----------------------------------------------------------------

    def _http(
        self, url: str, part: Path, size: int, progress: Progress, cancelled: Callable[[], bool]
    ) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have >= size:
            return
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise _TransientError(f"HTTP {exc.code} {exc.reason}") from None
            raise UpdateError(f"HTTP {exc.code} {exc.reason} for {shown(url)}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _TransientError(str(getattr(exc, "reason", exc))) from None
        with response:
            if response.status == 206 and have:
                mode = "ab"
                log.info("resuming %s at byte %d", shown(url), have)
            else:
                mode, have = "wb", 0  # the server ignored Range: start over
            with part.open(mode) as out:
                have = self._stream(response, out, part, url, have, size, progress, cancelled)
        if have < size:
            raise _TransientError(f"connection closed at byte {have} of {size}")

    def _stream(
        self,
        response: Any,
        out: IO[bytes],
        part: Path,
        url: str,
        have: int,
        size: int,
        progress: Progress,
        cancelled: Callable[[], bool],
    ) -> int:
        try:
            # read1: whatever has arrived; read(n) would sit on a stalled
            # connection until n bytes came, losing a partial chunk.
            while chunk := response.read1(CHUNK):
                have += len(chunk)
                if have > size:
                    raise UpdateError(
                        f"{shown(url)} sent more than the declared size {size} bytes (model.size)"
                    )
                _write(out, part, chunk)
                progress(have, size)
                if cancelled():
                    raise SupersededError
        except TimeoutError as exc:
            raise _TransientError(f"stalled: no data for {self._timeout} s") from exc
        except (http.client.IncompleteRead, ConnectionError, OSError) as exc:
            raise _TransientError(f"connection broke at byte {have}: {exc}") from exc
        return have


def shown(url: str) -> str:
    """``url`` as errors and logs show it: without ``user:password@``."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"***@{host}{port}").geturl()


def _write(out: IO[bytes], part: Path, chunk: bytes) -> None:
    """Write and flush a chunk; a full or read-only disk is the update's failure, not a retry."""
    try:
        out.write(chunk)
        # Flushed per chunk: a crash must leave on disk what was received,
        # or the resume would start over.
        out.flush()
    except OSError as exc:
        raise UpdateError(
            f"cannot write {part.parent.name}/{part.name}: {os.strerror(exc.errno or 0)}"
        ) from exc


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
