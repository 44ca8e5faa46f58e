"""Images whose decoding costs far more than their size says: progressive JPEG scan bombs.

A progressive JPEG's every scan is a pass over every 8x8 block of the picture, so one
tiny AC scan repeated thousands of times (``tests/vision_support.py``'s
``progressive_bomb``) is a few hundred KB, under the pixel and payload limits, that
takes Pillow minutes to decode. The module refuses more than ``MAX_SCANS`` (32) scans from
the marker segments before decoding (``image_too_complex``), stops any decode at its
deadline (``image_too_slow``) and refuses the same bytes again at once, and answers a
batch a slice at a time, so the serving loop keeps the network (and the keepalive).
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from edgeinfer.config.sections import ImageLimits
from edgeinfer.errors import ReadingError
from edgeinfer.manifest.document import Manifest
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.engine import Engine
from edgeinfer.pipeline.loop import ServingLoop
from edgeinfer.pipeline.message import Message, Outcome
from edgeinfer.pipeline.responder import Responder
from edgeinfer.runtimes.base import TensorSpec
from edgeinfer.runtimes.fake import FakeModel
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.vision import images
from edgeinfer.vision.images import decode_image
from edgeinfer.vision.plan import VisionPlan
from tests.fakes import engine_settings
from tests.support import Collector, ModuleProcess, Publisher
from tests.vision_support import (
    BRIGHTNESS,
    brightness_model,
    jpeg,
    png_bomb,
    progressive_bomb,
    scan_count,
    skimage_photo,
)

PIXELS = ImageLimits().max_pixels  # pipeline.max_image_pixels' default
MAX_SCANS = ImageLimits().max_scans


def refused(payload: bytes, guard: Any = None) -> tuple[ReadingError, float]:
    """The ReadingError decoding ``payload`` raises, and the CPU seconds spent until then.

    CPU time of this thread, not the wall clock: it measures the decoding done, which is
    what a limit bounds; other processes on the machine (the suite's other workers) stretch
    the wall clock of the same work, by a second and more on two cores.
    """
    started = time.thread_time()
    with pytest.raises(ReadingError) as caught:
        if guard is None:
            decode_image(payload, "RGB", PIXELS)
        else:
            guard.decode(payload, "RGB")
    return caught.value, time.thread_time() - started


def overran(payload: bytes, guard: Any) -> tuple[ReadingError, float]:
    """The ReadingError of a decode expected to run to its deadline, and its wall seconds
    (the deadline is on the wall clock: a busy machine gives it less CPU before then)."""
    started = time.perf_counter()
    with pytest.raises(ReadingError) as caught:
        guard.decode(payload, "RGB")
    return caught.value, time.perf_counter() - started


# -- scans: refused from the marker segments, before decoding -------------------------------


@pytest.mark.parametrize(
    ("side", "scans", "mode", "gap"),
    [
        (256, 33, "L", b""),  # one over the limit
        (1024, 2000, "L", b""),  # 28 KB, 1.8 s to decode
        (1024, 500, "RGB", b""),
        (4096, 200, "L", b""),
        # junk and stuffed FF 00 between the scans: libjpeg skips them, so must the count
        (512, 300, "L", b"junk\xff\x00\x00"),
    ],
)
def test_a_jpeg_of_more_scans_than_the_limit_is_refused_before_decoding(
    side: int, scans: int, mode: str, gap: bytes
) -> None:
    payload = progressive_bomb(side, scans, mode, gap)
    assert scan_count(payload) == scans
    error, took = refused(payload)
    assert error.code == "image_too_complex"
    assert f"more than {MAX_SCANS} scans" in error.reason
    assert "refused before decoding" in error.reason
    assert took < 0.1  # the marker segments were walked; no scan was decoded


def test_the_findings_bomb_half_a_megabyte_of_scans_is_refused_in_milliseconds() -> None:
    payload = progressive_bomb(4096, 15000)  # minutes of decoding before this limit
    assert len(payload) < 1_048_576  # under pipeline.max_payload_bytes
    error, took = refused(payload)
    assert error.code == "image_too_complex"
    assert took < 0.1


def test_a_jpeg_at_the_scan_limit_decodes() -> None:
    payload = progressive_bomb(256, MAX_SCANS)
    assert decode_image(payload, "L", PIXELS).size == (256, 256)


def test_a_progressive_photograph_of_ten_scans_decodes_as_pillow_decodes_it() -> None:
    buf = io.BytesIO()
    Image.fromarray(skimage_photo("astronaut")).save(buf, "JPEG", quality=90, progressive=True)
    payload = buf.getvalue()
    assert scan_count(payload) == 10  # libjpeg's progression for colour
    got = decode_image(payload, "RGB", PIXELS)
    want = Image.open(io.BytesIO(payload)).convert("RGB")
    assert np.array_equal(np.asarray(got), np.asarray(want))


def test_scan_markers_inside_a_comment_are_not_counted() -> None:
    """FF DA inside a COM (or an EXIF thumbnail) segment is data, skipped by its length."""
    photo = jpeg(skimage_photo("chelsea"))
    body = b"\xff\xda" * 200
    comment = b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body
    payload = photo[:2] + comment + photo[2:]
    assert decode_image(payload, "RGB", PIXELS).size == (451, 300)


# -- the deadline: what is not cheap to recognise is stopped while decoding -----------------


@pytest.mark.parametrize(
    ("side", "scans", "mode", "deadline_ms"),
    [
        (2048, 3000, "L", 200),  # about 10 s to decode
        (4096, 1000, "L", 300),  # about 14 s
        (2048, 3000, "RGB", 150),
    ],
)
def test_a_decode_that_overruns_its_deadline_is_stopped_there(
    side: int, scans: int, mode: str, deadline_ms: int
) -> None:
    guard = images.ImageGuard(ImageLimits(PIXELS, max_scans=10**6, max_decode_ms=deadline_ms))
    error, took = refused(progressive_bomb(side, scans, mode), guard)
    assert error.code == "image_too_slow"
    assert f"over {deadline_ms} ms" in error.reason
    # Stopped within a chunk of the deadline: the CPU it had until then, and one chunk.
    assert took < deadline_ms / 1000 + 0.5


def test_a_busy_gateway_refuses_no_image_an_idle_one_decodes() -> None:
    """The budget is the decoding thread's CPU time, not the wall clock: pinned to one core
    beside three busy processes, an image of 0.44 s of decoding takes about four times that
    on the wall clock and still decodes within a 1 s budget (on the wall clock it was
    refused, and its bytes remembered as too slow, only because the machine was busy)."""
    payload = progressive_bomb(1024, 400)
    guard = images.ImageGuard(ImageLimits(PIXELS, max_scans=10**6, max_decode_ms=1000))
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})  # this thread; the processes below inherit it
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        time.sleep(0.1)  # until they spin
        started = time.perf_counter()
        image = guard.decode(payload, "RGB")
        took = time.perf_counter() - started
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        os.sched_setaffinity(0, mask)
    assert image.size == (1024, 1024)
    assert took > 1.0, f"the wall clock was not stretched past the budget: {took:.2f} s"


def test_a_png_is_held_to_the_deadline_too() -> None:
    guard = images.ImageGuard(ImageLimits(PIXELS, max_decode_ms=1))
    error, _ = refused(png_bomb(5000), guard)  # 25 M pixels: inside the pixel limit
    assert error.code == "image_too_slow"
    assert "PNG" in error.reason


def test_bytes_that_overran_are_refused_again_at_once_and_other_images_still_decode() -> None:
    guard = images.ImageGuard(ImageLimits(PIXELS, max_scans=10**6, max_decode_ms=200))
    bomb = progressive_bomb(2048, 3000)
    first, took = overran(bomb, guard)
    assert first.code == "image_too_slow" and took >= 0.2
    again, took = refused(bomb, guard)  # a redelivery: the same bytes
    assert again.code == "image_too_slow" and "before" in again.reason
    assert took < 0.05  # not decoded again
    assert guard.decode(jpeg(skimage_photo("coffee")), "RGB").size == (600, 400)
    # Remembered by its bytes, not its kind: another bomb costs its own deadline.
    _, took = overran(progressive_bomb(2048, 3001), guard)
    assert took >= 0.2


# -- the engine: a batch of slow images is answered a slice at a time ------------------------


class Ticks:
    """A transport without a socket that records when the loop serviced it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []  # the serving thread's CPU time at each turn

    def socket(self) -> None:
        return None

    def wants_write(self) -> bool:
        return False

    def buffered(self) -> bool:
        return False

    def read(self) -> None:
        pass

    def write(self) -> None:
        pass

    def tick(self, now: float) -> float | None:
        self.times.append(now)
        self.cpu.append(time.thread_time())  # tick() runs on the serving thread
        return None

    def flush(self) -> None:
        pass

    def most_cpu_between_turns(self) -> float:
        """The most CPU the serving thread spent between two turns of the network."""
        return max(b - a for a, b in itertools.pairwise(self.cpu))


class Published:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], float]] = []
        #: The publishing thread and its CPU time, at each publish.
        self.cpu: list[tuple[int, float]] = []
        self.lock = threading.Lock()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_done: Outcome | None = None,
        token: object = None,
    ) -> None:
        with self.lock:
            self.sent.append((topic, orjson.loads(payload), time.monotonic()))
            self.cpu.append((threading.get_ident(), time.thread_time()))
        if on_done is not None:
            on_done(None)


def camera_engine(**limits: Any) -> tuple[Engine, Published]:
    spec = TensorSpec("x", np.dtype(np.float32), (None, 3, 32, 32))
    model = FakeModel(
        (spec,),
        (TensorSpec("p", np.dtype(np.float32), (None, 2)),),
        lambda feeds: {"p": np.tile([[0.2, 0.8]], (len(feeds["x"]), 1)).astype(np.float32)},
    )
    manifest = Manifest.from_doc({"name": "cam", "version": "1", **BRIGHTNESS}, "test")
    active = LoadedModel(model, manifest, Path("cam"), "", vision=VisionPlan(model, manifest, None))
    settings = engine_settings(max_batch=16, queue_size=64, images=ImageLimits(**limits))
    published = Published()
    metrics = Metrics()
    return Engine(active, settings, Responder(published, metrics, "errors"), metrics), published


@pytest.fixture
def loop_of() -> Iterator[list[ServingLoop]]:
    loops: list[ServingLoop] = []
    yield loops
    for loop in loops:
        assert loop.stop(30)
        loop.close()


def answered(published: Published, count: int, timeout: float) -> list[tuple[str, Any, float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with published.lock:
            if len(published.sent) >= count:
                return list(published.sent)
        time.sleep(0.01)
    return list(published.sent)


def test_slow_images_in_one_batch_let_the_loop_service_the_network_between_them(
    loop_of: list[ServingLoop], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six 4096 x 4096 images of 32 scans (each within every limit, each about half a second
    to decode) queued at once: pre-fix one batch decoded them all between two turns.

    Counted, not timed: between two turns of the network at most one of them is decoded
    (a wall-clock ratio failed when the suite's other workers slowed one decode down)."""
    from edgeinfer.pipeline.decode import Decoder

    slow = [progressive_bomb(4096, MAX_SCANS - k) for k in range(6)]
    decode = Decoder.decode
    started: list[float] = []

    def counted(self: Decoder, payload: bytes) -> Any:
        started.append(time.monotonic())  # the clock the loop gives its ticks
        return decode(self, payload)

    monkeypatch.setattr(Decoder, "decode", counted)
    engine, published = camera_engine()
    ticks = Ticks()
    loop = ServingLoop(engine, ticks)
    loop_of.append(loop)
    for n, payload in enumerate(slow):
        engine.submit(Message(f"cam/{n}", payload, time.perf_counter(), lambda: None))
    loop.start()
    sent = answered(published, len(slow), 60)
    assert [topic for topic, _, _ in sent] == [f"out/cam/{n}" for n in range(6)]
    assert len(started) == len(slow)
    between = [
        sum(1 for s in started if before <= s < after)
        for before, after in itertools.pairwise(ticks.times)
    ]
    assert max(between) == 1, f"decodes between two network turns: {between}"


def test_a_batch_with_slow_bombs_answers_each_at_its_deadline_and_the_reading_behind_them(
    loop_of: list[ServingLoop],
) -> None:
    engine, published = camera_engine(max_scans=10**6, max_decode_ms=300)
    ticks = Ticks()
    loop = ServingLoop(engine, ticks)
    loop_of.append(loop)
    bombs = [progressive_bomb(2048, 3000 + k) for k in range(3)]  # ~10 s each undisturbed
    normal = jpeg(skimage_photo("coffee"))
    now = time.perf_counter()
    for n, payload in enumerate([*bombs, normal]):
        engine.submit(Message(f"cam/{n}", payload, now, lambda: None))
    loop.start()
    sent = answered(published, 4, 30)
    assert len(sent) == 4
    errors = [doc["error"] for topic, doc, _ in sent if topic == "errors"]
    assert errors == ["image_too_slow"] * 3
    assert sent[-1][0] == "out/cam/3" and sent[-1][1]["label"] == "bright"
    # Counted in the serving thread's CPU time (the budget's clock; other processes on
    # the machine stretch the wall clock): three budgets spent, not three bombs decoded.
    thread, cpu_at_last = published.cpu[-1]
    assert thread == loop.ident
    assert cpu_at_last < 3 * 0.3 + 1.5  # the thread's CPU time since it started
    assert ticks.most_cpu_between_turns() < 0.3 + 0.75


# -- through the module, over a real mosquitto ----------------------------------------------


def until(sink: Collector, errors: int, results: int, timeout: float) -> float:
    """Seconds until ``sink`` holds that many error reports and results (or the timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if len(sink.docs("/errors")) >= errors and len(sink.docs("/inference/")) >= results:
            break
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_scan_bomb_is_refused_the_readings_behind_it_answered_and_the_module_stays(
    publisher: Callable[..., Publisher], broker: LocalBroker, tmp_path: Path
) -> None:
    """The finding: a 0.5 MB, 4096 x 4096 grey progressive JPEG of 15,000 scans held the
    serving thread for minutes; past 1.5 x keepalive the broker dropped the module and
    redelivered the bomb on reconnect, in a loop."""
    model = brightness_model(tmp_path)
    env = {"EDGEINFER_BROKER_KEEPALIVE_S": "5"}
    module = ModuleProcess(broker.url, model, tmp_path, env=env).start()
    status = module.module_id
    sink = Collector(
        broker.url,
        [module.result_topic("#"), module.errors_topic, f"edgeinfer/{status}/status"],
    )
    pub = publisher()
    bomb = progressive_bomb(4096, 15000)
    bright = jpeg(np.full((480, 640, 3), 230, np.uint8))
    dark = jpeg(np.full((480, 640, 3), 20, np.uint8))
    sent_at = time.monotonic()
    pub.send(module.topic("cam1"), bomb)
    pub.send(module.topic("cam1"), bright)  # the same topic: it waits for the bomb's answer
    pub.send(module.topic("cam2"), {"payload": base64.b64encode(dark).decode(), "id": "d-1"})
    pub.flush()
    until(sink, errors=1, results=2, timeout=10)
    took = time.monotonic() - sent_at
    reports = sink.docs("/errors")
    assert [r["error"] for r in reports] == ["image_too_complex"], reports
    assert "more than 32 scans" in reports[0]["reason"]
    results = sink.docs("/inference/")
    assert sorted(r["label"] for r in results) == ["bright", "dark"], results
    assert took < 5, took  # answered at once, not after the bomb decoded
    # Past 1.5 x keepalive of the bomb's arrival: still the first connection.
    time.sleep(max(0.0, sent_at + 8 - time.monotonic()))
    assert module.metric("edgeinfer_broker_connects_total") == 1
    assert all(d.get("state") != "offline" for d in sink.docs("/status"))

    # A redelivery: the module frozen with the bomb in its socket, killed, started again on
    # its persistent session; the broker hands it the bomb (and what followed) once more.
    os.kill(module.pid, signal.SIGSTOP)
    pub.send(module.topic("cam1"), bomb)
    pub.send(module.topic("cam1"), dark)
    pub.flush()
    time.sleep(0.5)  # delivered into the frozen module's socket, not acknowledged
    os.kill(module.pid, signal.SIGKILL)
    assert module.proc is not None
    module.proc.wait(10)
    again = ModuleProcess(broker.url, model, tmp_path, module_id=module.module_id, env=env)
    again.start()
    took = until(sink, errors=2, results=3, timeout=10)
    reports = sink.docs("/errors")
    seen = f"reports {reports}; results {sink.docs('/inference/')}; log: {again.log()}"
    # Refused again, at once; answered at least once (a refused reading's report is an
    # answer like any other: once more if the broker delivers it once more).
    assert len(reports) >= 2 and {r["error"] for r in reports} == {"image_too_complex"}, seen
    assert sink.docs("/inference/")[-1]["label"] == "dark", seen
    assert took < 3, seen
    assert again.metric("edgeinfer_broker_connects_total") == 1, seen  # no reconnect loop
    sink.close()
    pub.flush()


def test_the_configured_scan_limit_reaches_the_running_module(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    """pipeline.max_image_scans from the environment is the limit the module holds to: a
    ten-scan progressive photograph is refused under a limit of 8, naming it."""
    model = brightness_model(tmp_path)
    env = {"EDGEINFER_PIPELINE_MAX_IMAGE_SCANS": "8"}
    module = ModuleProcess(broker.url, model, tmp_path, env=env).start()
    sink = collector([module.result_topic("#"), module.errors_topic])
    pub = publisher()
    buf = io.BytesIO()
    Image.fromarray(skimage_photo("astronaut")).save(buf, "JPEG", quality=90, progressive=True)
    pub.send(module.topic("cam1"), buf.getvalue())
    pub.flush()
    until(sink, errors=1, results=0, timeout=10)
    reports = sink.docs("/errors")
    assert [r["error"] for r in reports] == ["image_too_complex"], reports
    assert "more than 8 scans" in reports[0]["reason"]
    pub.flush()
