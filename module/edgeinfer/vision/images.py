"""Image readings: JPEG and PNG bytes into pixels, refusing what is too large to decode.

A payload is an image when it starts with a JPEG (``FF D8 FF``) or PNG
(``89 50 4E 47 0D 0A 1A 0A``) signature. Pillow's ``Image.open`` reads only the
header, so the width and height are checked against the pixel limit before a
single pixel is decoded: a 20000 x 20000 PNG of zeros is a few kilobytes on the
wire and 1.2 GB once decoded (a decompression bomb). Pillow's own bomb check
(``Image.MAX_IMAGE_PIXELS``) is kept as a second guard and translated too.

Decoding is bounded in time as well as in size. A progressive JPEG decodes
every scan over every 8x8 block of the picture, so one AC scan repeated
thousands of times (tens of bytes each) is a few hundred KB that takes minutes:
more than ``ImageLimits.max_scans`` scans are refused from the marker segments before
decoding (``image_too_complex``). What is left is decoded a chunk at a time
with the decoding thread's CPU time checked between chunks, and stopped once it
has spent the budget (``image_too_slow``); the digests of payloads that overran
are remembered, so the same bytes sent again (a broker's redelivery) are refused
at once. CPU time, not the wall clock: what an image costs to decode is then a
property of its bytes, the same on a busy gateway as on an idle one, so a busy
moment never refuses (and remembers) a picture that decodes within the budget.

A JPEG's EXIF orientation (a phone or a camera mounted on its side stores the
pixels as the sensor read them and says how to turn them) is applied, so the
model sees the picture upright, as a viewer shows it, and boxes are in the
pixels of that upright picture.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import warnings
from collections import OrderedDict

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgeinfer.config.sections import ImageLimits
from edgeinfer.errors import ReadingError

JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2..8 mirrored and/or turned
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: The modes a decoded image is converted to, by ``preprocess.color``.
_MODES = {"RGB": "RGB", "BGR": "RGB", "L": "L"}

#: Bytes handed to the decoder between two looks at the clock. A decode call costs what
#: the scans in its chunk cost: 1 KB holds at most about 90 of the smallest scans,
#: and the chunks cost 2-8 % of a plain decode (measured: 1.37 -> 1.48 ms on 512x512).
_CHUNK = 1024
#: Digests of payloads that overran the deadline, remembered (the most recent ones).
_REMEMBERED = 1024
#: A marker: its last fill FF and a byte that is not a stuffed zero (FF 00), a restart
#: marker (RSTn, data inside a scan) or more fill; libjpeg finds markers so (FF FF 00
#: in entropy-coded data is fill and a stuffed FF). No quantifier: one would cost the
#: regex its fast scan for the FF (measured: 25x slower on a 1 MB JPEG).
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9
_TEM = 0x01  # no length follows (nor RSTn's, which the search above passes over)


def image_kind(payload: bytes) -> str | None:
    """``"jpeg"`` or ``"png"`` when ``payload`` starts with that signature, else None."""
    if payload.startswith(JPEG_MAGIC):
        return "jpeg"
    if payload.startswith(PNG_MAGIC):
        return "png"
    return None


def decode_image(payload: bytes, color: str, max_pixels: int) -> Image.Image:
    """Decode ``payload`` as RGB (for ``color`` RGB or BGR) or L; raises ReadingError.

    ``max_pixels`` is ``pipeline.max_image_pixels``; it is enforced from the
    header, before decoding. The scan limit and the CPU budget are the defaults;
    nothing is remembered between calls (see :class:`ImageGuard`).
    """
    return ImageGuard(ImageLimits(max_pixels=max_pixels)).decode(payload, color)


class ImageGuard:
    """The limits on what one image reading may cost, and the payloads that overran them.

    One per serving engine, kept across model swaps, so a payload that overran is
    refused at once whichever model is serving. Used from one thread (the serving one).
    """

    def __init__(self, limits: ImageLimits) -> None:
        """``limits``: ``pipeline.max_image_*`` (:meth:`PipelineConfig.image_limits`)."""
        self.max_pixels = limits.max_pixels
        self.max_scans = limits.max_scans
        self.max_decode_ms = limits.max_decode_ms
        self._overran: OrderedDict[bytes, None] = OrderedDict()

    def decode(self, payload: bytes, color: str) -> Image.Image:
        """Decode ``payload`` as RGB (``color`` RGB or BGR) or L; raises ReadingError."""
        kind = (image_kind(payload) or "image").upper()
        if kind == "JPEG" and jpeg_scans(payload, self.max_scans) > self.max_scans:
            raise ReadingError(
                "image_too_complex",
                f"the JPEG has more than {self.max_scans} scans: expected at most "
                f"{self.max_scans} (a progressive JPEG has about 10, and each scan is "
                "decoded over the whole picture); refused before decoding",
            )
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if digest in self._overran:
            self._overran.move_to_end(digest)
            raise ReadingError(
                "image_too_slow",
                f"the {kind} took over {self.max_decode_ms:g} ms of CPU to decode before: expected "
                f"one that decodes within {self.max_decode_ms:g} ms; refused again without "
                "decoding",
            )
        source = _Clocked(payload, time.thread_time() + self.max_decode_ms / 1000)
        try:
            return _decode(source, kind, color, self.max_pixels)
        except _OverranError:
            self._overran[digest] = None
            if len(self._overran) > _REMEMBERED:
                self._overran.popitem(last=False)
            size = f" {source.size[0]}x{source.size[1]}" if source.size else ""
            raise ReadingError(
                "image_too_slow",
                f"the{size} {kind} took over {self.max_decode_ms:g} ms of CPU to decode: expected "
                f"one that decodes within {self.max_decode_ms:g} ms; stopped, and refused "
                "at once if sent again",
            ) from None


def jpeg_scans(payload: bytes, limit: int) -> int:
    """The scans (SOS segments) of a JPEG as libjpeg would decode them, counted up to
    ``limit + 1``: no more is needed to refuse it, and counting stays a few
    milliseconds whatever the payload holds.

    Segments are skipped by their length, so an FF DA inside a comment or an EXIF
    thumbnail is not counted; after each, the next marker is found as libjpeg finds
    it (past the entropy-coded data, junk and stuffed bytes), so none is missed.
    """
    scans, pos = 0, 2
    while scans <= limit:
        # Past entropy-coded data, junk between segments, stuffed bytes and fill FFs.
        found = _MARKER.search(payload, pos)
        if found is None:
            break
        pos = found.end()
        marker = payload[pos - 1]
        if marker == _EOI:
            break
        if marker == _TEM:
            continue
        if marker == _SOS:
            scans += 1
        # libjpeg reads the two length bytes whatever they say, then skips the rest.
        pos += max(2, int.from_bytes(payload[pos : pos + 2], "big"))
    return scans


class _OverranError(Exception):
    """The decode spent its CPU budget (raised from a read, through Pillow)."""


class _Clocked(io.BytesIO):
    """The payload as a file whose reads fail once the reading thread has spent its CPU
    budget (``deadline``, on :func:`time.thread_time`'s clock).

    Pillow reads the header through it, then hands the decoder ``_CHUNK`` bytes a
    read (``decodermaxblock``): the clock is looked at between any two decoder calls.
    A Python thread cannot be stopped, nor can a C decoder, but one that runs out of
    input returns; so the decode stops itself, on the thread it runs on, within a
    chunk of the deadline, and nothing goes on burning CPU behind a refused reading.
    """

    def __init__(self, payload: bytes, deadline: float) -> None:
        super().__init__(payload)
        self._deadline = deadline
        self.size: tuple[int, int] | None = None  # the image's, once its header was read

    def read(self, size: int | None = -1, /) -> bytes:
        if time.thread_time() > self._deadline:
            raise _OverranError
        return super().read(size)


def _decode(source: _Clocked, kind: str, color: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns (and only warns) between MAX_IMAGE_PIXELS and twice it:
            # the limit below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # A camera's garbled EXIF block: its orientation is lost (see _upright), no more.
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
            image: Image.Image = Image.open(source, formats=("JPEG", "PNG"))
            width, height = source.size = image.size
            if width * height > max_pixels:
                raise ReadingError(
                    "image_too_large",
                    f"the {kind} is {width}x{height} = {width * height} pixels: expected "
                    f"at most {max_pixels} (pipeline.max_image_pixels); refused before decoding",
                )
            if isinstance(image, ImageFile.ImageFile):
                image.decodermaxblock = _CHUNK
            image.load()
            if kind == "JPEG":
                _upright(image)
            if image.mode.startswith("I"):  # 16-bit grey ("I;16", read as "I"): convert clips
                image = image.point(lambda v: v / 257).convert("L")
            if image.mode != _MODES[color]:
                image = image.convert(_MODES[color])
    except (ReadingError, _OverranError):
        raise
    except Image.DecompressionBombError as exc:
        raise ReadingError(
            "image_too_large",
            f"the {kind} is a decompression bomb ({exc}): expected at most "
            f"{max_pixels} pixels (pipeline.max_image_pixels)",
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ReadingError(
            "bad_image",
            f"the {kind} does not decode ({exc}): expected a complete JPEG or PNG image",
        ) from exc
    return image


def _upright(image: Image.Image) -> None:
    """Turn a decoded JPEG as its EXIF orientation says, in place."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block costs its orientation, not the image
        return
    if orientation != 1:
        ImageOps.exif_transpose(image, in_place=True)


def guard_pillow(max_pixels: int) -> None:
    """Set Pillow's own bomb limit no lower than ours, so ours is the one that speaks.

    Pillow raises DecompressionBombError above twice ``MAX_IMAGE_PIXELS``; it is
    process-wide, so it is only ever raised, never lowered below its default.
    """
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
