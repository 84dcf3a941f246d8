"""Test helper: Debian's headless Chromium driven by Selenium, never downloading a browser or a driver."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

SCREENSHOTS_ENV = "SPKIDD_SCREENSHOTS"
"""A folder for the page's screenshots (`SPKIDD_SCREENSHOTS=docs` refreshes the README's); else the test's own
folder, so a test run leaves the repository as it was."""
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE = (390, 844)
DESKTOP = (1280, 800)

T = TypeVar("T")


@contextlib.contextmanager
def chromium(
    size: tuple[int, int] = DESKTOP, microphone: Path | None = None, flags: tuple[str, ...] = ()
) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium; `microphone`: a WAV file its fake microphone plays (getUserMedia is granted);
    `flags`: more command-line switches."""
    with tempfile.TemporaryDirectory(prefix="spkidd-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            *flags,
        ):
            options.add_argument(flag)
        if microphone is not None:
            options.add_argument("--use-fake-ui-for-media-stream")
            options.add_argument("--use-fake-device-for-media-stream")
            options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_window_size(*size)
            yield driver
        finally:
            driver.quit()


def wait_until(check: Callable[[], T], timeout: float = 30.0, what: str = "the page") -> T:
    """Polls `check` until it returns something true (exceptions count as not yet); returns that value."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")
        time.sleep(0.1)


def screenshot(driver: webdriver.Chrome, test_folder: Path, name: str) -> None:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or test_folder)
    folder.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(folder / name)), f"no screenshot {name}"
