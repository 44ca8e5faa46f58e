"""The browser harness itself (tests/browser.py): it waits, it sees, and it reports errors."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, open_browser

PAGES = {
    "/late": b"""<!doctype html><title>late</title>
<h1>Harness</h1><p id="state">waiting</p>
<script>
// Ready 300 ms after the test says go: a timer from the page's load raced the test's
// first look under the suite's load (chromedriver's round trips took longer than it).
const ready = () => { document.getElementById("state").textContent = "ready"; };
window.go = () => setTimeout(ready, 300);
</script>
""",
    "/logs-error": b"""<!doctype html><title>logs</title>
<script>console.log("fine"); console.warn("careful"); console.error("boom");</script>
""",
    "/throws": b"""<!doctype html><title>throws</title>
<script>setTimeout(() => { throw new Error("kaboom"); }, 0);</script>
""",
}


class _Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGES.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with open_browser() as b:
        yield b


def test_waits_for_what_a_script_sets_later_and_screenshots_it(site: str, browser: Browser) -> None:
    browser.goto(f"{site}/late")
    assert browser.text("#state") == "waiting"
    browser.js("window.go()")
    assert browser.wait_for("document.getElementById('state').textContent === 'ready'", 5)
    assert browser.wait_for(lambda: browser.text("#state"), 1) == "ready"
    assert browser.js("return [window.outerWidth, window.outerHeight]") == [1400, 1000]
    with pytest.raises(TimeoutError, match="never"):
        browser.wait_for("window.never", 0.2)

    shot = browser.screenshot("harness late page")
    assert shot == shot.parent / "harness-late-page.png"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert shot.stat().st_size > 1024
    assert browser.console_errors() == []


def test_console_errors_and_uncaught_exceptions_are_reported(
    site: str, browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser.goto(f"{site}/logs-error")
    browser.goto(f"{site}/throws")
    browser.wait_for(lambda: len(browser.console_errors()) >= 2, 5)
    errors = browser.console_errors()
    assert len(errors) == 2, errors
    assert '"boom"' in errors[0]
    assert "Uncaught Error: kaboom" in errors[1]
    # A page's /favicon.ico 404 may be in the log too (source "network"), but is no error.
    entries = [e for e in browser.console() if e.source != "network"]
    assert {e.message.split()[-1]: (e.level, e.source) for e in entries} == {
        '"fine"': ("INFO", "console-api"),
        '"careful"': ("WARNING", "console-api"),
        '"boom"': ("SEVERE", "console-api"),
        "kaboom": ("SEVERE", "javascript"),
    }
    browser.clear_console()
    assert browser.console_errors() == []

    monkeypatch.setenv("EDGEINFER_TEST_ARTIFACTS", str(tmp_path))
    assert browser.screenshot("x").parent == tmp_path
