"""A real headless Chromium for tests: Debian's chromium driven through its chromedriver.

    with open_browser() as browser:
        browser.goto(url)
        browser.wait_for("document.querySelector('#state')?.textContent === 'ready'")
        assert browser.console_errors() == []

Nothing is downloaded: the browser and the driver are the executables on PATH (`make test`
installs Debian's chromium and chromium-driver), or $EDGEINFER_CHROMIUM and
$EDGEINFER_CHROMEDRIVER. Screenshots go to $EDGEINFER_TEST_ARTIFACTS, else test-artifacts/.
Selenium cannot set request headers, so pages behind a bearer token are out of reach here:
browse the loopback, which needs none.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.command import Command

# Selenium Manager is never asked (the driver's path is given), and were it asked, it stays offline.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_BROWSER_DOWNLOAD", "true")

ROOT = Path(__file__).resolve().parent.parent
WINDOW = (1400, 1000)
# Noise, not the page's fault: Chromium asks for /favicon.ico, and a 404 is logged as SEVERE.
IGNORED_ERRORS = (re.compile(r"/favicon\.ico - Failed to load resource"),)
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-dev-shm-usage",  # a small /dev/shm (docker's 64 MB) crashes renderers
    "--disable-gpu",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--lang=en-US",
)

T = TypeVar("T")


class ConsoleEntry(NamedTuple):
    level: str  # SEVERE, WARNING, INFO, DEBUG
    source: str  # console-api, javascript (uncaught errors), network, ...
    message: str  # 'http://127.0.0.1:8080/ 12:9 "boom"'


def artifacts_dir() -> Path:
    """Where screenshots go: $EDGEINFER_TEST_ARTIFACTS, else test-artifacts/ in the repository."""
    return Path(os.environ.get("EDGEINFER_TEST_ARTIFACTS") or ROOT / "test-artifacts")


class Browser:
    """One headless Chromium window, 1400x1000, with its console log kept."""

    def __init__(self, driver: webdriver.Chrome, started_in: float) -> None:
        self.driver = driver  # for anything the helpers below do not cover
        self.started_in = started_in  # seconds from launch to a ready session
        self._console: list[ConsoleEntry] = []

    def goto(self, url: str) -> None:
        """Load url and wait for its load event."""
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        """Run script (a function body: `return ...` to get a value back) in the page."""
        return self.driver.execute_script(script, *args)

    def text(self, css: str) -> str:
        """The rendered text of the first element css selects (NoSuchElementException if none)."""
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    @overload
    def wait_for(self, condition: str, timeout: float = ...) -> Any: ...
    @overload
    def wait_for(self, condition: Callable[[], T], timeout: float = ...) -> T: ...
    def wait_for(self, condition: str | Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll until condition is truthy and return its value: a JavaScript expression
        evaluated in the page, or a Python callable. WebDriver errors (no such element, a
        page between loads, a JS exception) count as not yet. TimeoutError says what it saw."""
        check = condition if callable(condition) else lambda: self.js(f"return ({condition});")
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            try:
                seen = check()
                if seen:
                    return seen
            except WebDriverException as e:
                first_line = (e.msg or "").split("\n", 1)[0]
                seen = f"{type(e).__name__}: {first_line}"
            if time.monotonic() >= deadline:
                what = (
                    condition if isinstance(condition, str) else getattr(condition, "__name__", "")
                )
                raise TimeoutError(
                    f"after {timeout} s, {what!r} is still {seen!r}; "
                    f"console errors: {self.console_errors()}"
                )
            time.sleep(0.05)

    def console(self) -> list[ConsoleEntry]:
        """Every console entry since the browser opened (or since clear_console)."""
        # Reading the log empties chromedriver's buffer: keep what it gave.
        raw: list[dict[str, Any]] = self.driver.execute(Command.GET_LOG, {"type": "browser"})[
            "value"
        ]
        self._console += [ConsoleEntry(e["level"], e.get("source", ""), e["message"]) for e in raw]
        return list(self._console)

    def console_errors(self) -> list[str]:
        """SEVERE entries: console.error calls, uncaught exceptions and unhandled rejections,
        failed loads (a favicon 404 excepted)."""
        return [
            e.message
            for e in self.console()
            if e.level == "SEVERE" and not any(p.search(e.message) for p in IGNORED_ERRORS)
        ]

    def clear_console(self) -> None:
        self.console()
        self._console.clear()

    def screenshot(self, name: str) -> Path:
        """Save the viewport as artifacts_dir()/<name>.png and return the path."""
        folder = artifacts_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "screenshot"
        path = folder / (stem if stem.endswith(".png") else f"{stem}.png")
        path.write_bytes(self.driver.get_screenshot_as_png())
        return path


def _executable(env: str, *names: str) -> str:
    found = os.environ.get(env) or next(filter(None, map(shutil.which, names)), None)
    if not found:
        pytest.fail(
            f"no {names[0]} on PATH (or ${env}): apt-get install chromium chromium-driver "
            "(make test does)"
        )
    return found


def _options(profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = _executable("EDGEINFER_CHROMIUM", "chromium", "chromium-browser")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@contextmanager
def open_browser(*, name: str = "browser") -> Iterator[Browser]:
    """A fresh browser (own temporary profile); closed, every process of it gone, on exit.
    If the body raises, the page is saved first as <name>-failure.png."""
    home = Path(tempfile.mkdtemp(prefix="edgeinfer-chromium-"))
    driver: webdriver.Chrome | None = None
    try:
        service = Service(
            executable_path=_executable("EDGEINFER_CHROMEDRIVER", "chromedriver"),
            # Chromium's crash handlers keep their database under $XDG_CONFIG_HOME (dconf
            # under $XDG_CACHE_HOME): not in ~, and _kill_left_behind knows them by the path.
            env={
                **os.environ,
                "XDG_CONFIG_HOME": f"{home}/config",
                "XDG_CACHE_HOME": f"{home}/cache",
            },
        )
        began = time.monotonic()
        driver = webdriver.Chrome(options=_options(home / "profile"), service=service)
        driver.set_page_load_timeout(30)
        browser = Browser(driver, time.monotonic() - began)
        try:
            yield browser
        except BaseException:
            with suppress(WebDriverException, OSError):
                browser.screenshot(f"{name}-failure")
            raise
    finally:
        if driver is not None:
            driver.quit()
        _kill_left_behind(home)
        shutil.rmtree(home, ignore_errors=True)


def _kill_left_behind(home: Path, grace: float = 2.0) -> None:
    """Chromium's processes name the profile on their command line: wait for any that
    outlive quit() a moment, then kill them."""
    deadline = time.monotonic() + grace
    while (pids := _processes_naming(str(home))) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _processes_naming(text: str) -> list[int]:
    pids: list[int] = []
    needle = text.encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids
