"""The status page in a real browser (headless Chromium): live figures, outages, a deploy.

The page is opened before the module is ready (its broker is down), follows it to
ready, shows figures that agree with ``/metrics`` while readings stream in, and
shows a deploy on its timeline. Screenshots are kept in test-artifacts/ (or
$EDGEINFER_TEST_ARTIFACTS): ``status-page.png`` is the page after the deploy,
under load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.browser import Browser, open_browser
from tests.support import ONNX_MODEL, ModuleProcess, Publisher, off_loopback
from tests.updates_support import (
    HAR_LABELS,
    HAR_SELF_TEST,
    TFLITE,
    UPDATE_ENV,
    ModelServer,
    desired_for,
)

TOKEN = "page-token-0123456789abcdef"


def number(browser: Browser, element: str) -> float:
    text = browser.text(f"#{element}").replace(",", "")
    return float(text) if text not in ("", "\u2013") else -1.0  # an en dash: no figure yet


@contextmanager
def streaming(broker: LocalBroker, module: ModuleProcess, recordings: Recordings) -> Iterator[None]:
    """Readings at about 200 a second until the block ends."""
    stop = threading.Event()
    pub = Publisher(broker.url)

    def send() -> None:
        n = 0
        while not stop.wait(0.005):
            pub.send(
                module.topic("imu"), {"id": n, "features": recordings.windows[n % 40].tolist()}
            )
            n += 1

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        pub.close()


def agrees_with_metrics(browser: Browser, module: ModuleProcess, element: str, metric: str) -> None:
    """The page's figure lies between two scrapes of /metrics: one before the page caught
    up with it, one after it was read."""
    before = module.metric(metric)
    browser.wait_for(lambda: number(browser, element) >= before, timeout=10)
    shown = number(browser, element)
    after = module.metric(metric)
    assert before <= shown <= after, (element, before, shown, after)


def test_the_status_page_follows_the_module_through_an_outage_load_and_a_deploy(
    own_broker: LocalBroker, server: ModelServer, tmp_path: Path, recordings: Recordings
) -> None:
    own_broker.stop()  # the page is opened before the module can be ready
    module = ModuleProcess(own_broker.url, ONNX_MODEL, tmp_path, env=UPDATE_ENV)
    module.start(wait=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if module.http_get("/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    with open_browser(name="status-page") as browser:
        browser.goto(f"http://127.0.0.1:{module.http_port}/")
        browser.wait_for(lambda: "not connected to the broker" in browser.text("#banner"))
        assert browser.text("#broker-state") == "disconnected"
        browser.screenshot("status-page-not-ready")

        own_broker.start()
        browser.wait_for(lambda: browser.text("#banner") == "serving", timeout=20)
        assert browser.text("#broker-state") == "connected"
        assert browser.text("#model-version") == "1.0.0"

        with streaming(own_broker, module, recordings):
            browser.wait_for(lambda: number(browser, "readings-rate") > 50, timeout=15)
            agrees_with_metrics(
                browser, module, "readings-total", "edgeinfer_messages_received_total"
            )
            agrees_with_metrics(
                browser, module, "results-total", "edgeinfer_results_published_total"
            )
            browser.wait_for(lambda: browser.text("#p99").endswith(" ms"))

            url = server.add("/har-1.1.0.tflite", TFLITE)
            doc = desired_for(url, TFLITE, labels=HAR_LABELS, self_test=HAR_SELF_TEST, sequence=1)
            pub = Publisher(own_broker.url)
            pub.send(f"edgeinfer/{module.module_id}/desired", doc, retain=True)
            pub.close()
            active = '#update-timeline li[data-state="active"]'
            browser.wait_for(f"document.querySelector('{active}')", timeout=20)
            assert "1.1.0" in browser.text(active)
            states = browser.js(
                "return [...document.querySelectorAll('#update-timeline li')]"
                ".map(li => li.dataset.state).reverse();"
            )
            assert states == ["idle", "downloading", "verifying", "testing", "probation", "active"]
            browser.wait_for(lambda: browser.text("#model-version") == "1.1.0")
            # Four charts drawn, each with its series.
            assert browser.js("return document.querySelectorAll('.uplot canvas').length") == 4
            height = browser.js("return document.documentElement.scrollHeight")
            browser.driver.set_window_size(1400, height + 120)  # the timeline too
            browser.wait_for(lambda: browser.text("#model-version") == "1.1.0")
            path = browser.screenshot("status-page")
        assert path.stat().st_size > 20_000
        assert browser.console_errors() == []


def test_off_loopback_the_page_asks_for_the_token_and_then_shows(
    broker: LocalBroker, tmp_path: Path
) -> None:
    module = off_loopback(broker.url, ONNX_MODEL, tmp_path, token=TOKEN)
    with open_browser(name="status-page-token") as browser:
        browser.goto(f"http://127.0.0.1:{module.http_port}/")
        field = browser.driver.find_element("id", "token")
        field.send_keys(TOKEN[:-1] + "!\n")
        browser.wait_for(lambda: "refused" in browser.text("#why"))
        field.clear()
        field.send_keys(TOKEN + "\n")
        browser.wait_for(lambda: browser.text("#banner") == "serving", timeout=15)
        assert browser.text("#model-version") == "1.0.0"
        # The 401s of the first load and of the wrong token are the only errors.
        errors = browser.console_errors()
        assert errors and all("401" in e for e in errors), errors


def test_a_running_rollout_shows_its_versions_and_gates(
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    server: ModelServer,
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path, env=UPDATE_ENV).start()
    candidate = (ONNX_MODEL.parent.parent / "int8-static" / "model.onnx").read_bytes()
    url = server.add("/har-1.1.0.onnx", candidate)
    doc = desired_for(url, candidate, labels=HAR_LABELS, self_test=HAR_SELF_TEST, sequence=1)
    doc["rollout"] = {"mode": "shadow", "percent": 100, "min_samples": 10**9}
    pub = publisher()
    pub.send(f"edgeinfer/{module.module_id}/desired", doc, retain=True)
    pub.flush()
    with open_browser(name="status-page-rollout") as browser:
        browser.goto(f"http://127.0.0.1:{module.http_port}/")
        browser.wait_for("!document.getElementById('rollout').hidden", timeout=20)
        with streaming(broker, module, recordings):
            rows = "#rollout-gates tr"
            browser.wait_for(
                lambda: (
                    " 0 answered" not in browser.text(rows) and "answered" in browser.text(rows)
                ),
                timeout=15,
            )
        summary = browser.text("#rollout-summary")
        assert summary.startswith("shadow of har 1.1.0") and "100.0%" in summary, summary
        table = browser.text("#rollout-gates")
        assert "active" in table and "1.1.0" in table and "gate " in table, table
        assert "[object Object]" not in table + summary
        height = browser.js("return document.documentElement.scrollHeight")
        browser.driver.set_window_size(1400, height + 120)  # the rollout panel too
        browser.screenshot("status-page-rollout")
        assert browser.console_errors() == []
