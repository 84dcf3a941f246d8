"""The household page listening beyond loopback (`[web] host = "0.0.0.0"`), as a phone on the home network would
reach it: without `[web] token` it is read-only (every change refused with 403 and the documented message, nothing
written), with a token the same changes go through.

Who may change the voices is decided by the address the page LISTENS on (spkidd/web/auth.py: `loopback_only` is
the configured host), not by the caller's address and never by a header such as X-Forwarded-For, so the requests go
to 127.0.0.1 (tests send traffic to loopback only): the page listening on 0.0.0.0 is the same read-only page there,
which is exactly the rule under test, and a forged X-Forwarded-For does not change it."""

from __future__ import annotations

import contextlib
import hashlib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.support.browser import DESKTOP, chromium, wait_until
from tests.support.daemon import DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import free_port, wait_port
from tests.support.page_http import change, http, record

pytestmark = pytest.mark.timeout(120)

TOKEN = "kitchen table 42"
READ_ONLY = (
    "read-only: the page listens on 0.0.0.0 without a password; set [web] token in the daemon's config.toml to "
    "change voices from the network"
)


@dataclass
class Page:
    """A running daemon with its page on 0.0.0.0; `base` is its URL through loopback."""

    base: str
    port: int
    daemon: DaemonProcess
    model: Path
    clip: Path
    kept: Path
    """The folder of kept `unknown` clips (the random model names nobody, so every utterance is kept)."""

    def first_kept_clip(self) -> str:
        return wait_until(lambda: sorted(p.name for p in self.kept.glob("*.wav")), 60, "a kept clip")[0]


def _start(tmp: Path, token: str | None) -> Page:
    model = random_model(tmp / "voices.safetensors", ["alice", "bob", "carol"])
    clip = conversation(tmp, [("dave", "My name is Dave and this is my voice for the household.")], lead_s=0.3)
    port = free_port()
    web = f'[web]\nenabled = true\nhost = "0.0.0.0"\nport = {port}\n' + (f'token = "{token}"\n' if token else "")
    clips = f'[unknown_clips]\nfolder = "{tmp / "unknown"}"\n'
    extra = f'[embedded_broker]\nport = {free_port()}\nimplementation = "mosquitto"\n{clips}{web}'
    sources = file_source(clip)
    config = write_config(tmp / "config.toml", model, sources, 'broker = "embedded"', extra)
    daemon = DaemonProcess(config, tmp / "daemon.log")
    try:
        wait_port(port, lambda: daemon.process.poll() is None, timeout=90)
    except BaseException:
        daemon.kill()
        raise
    return Page(f"http://127.0.0.1:{port}", port, daemon, model, clip, tmp / "unknown")


@contextlib.contextmanager
def _running(tmp: Path, token: str | None) -> Iterator[Page]:
    page = _start(tmp, token)
    try:
        yield page
    finally:
        page.daemon.kill()


@pytest.fixture(scope="module")
def open_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with _running(tmp_path_factory.mktemp("read_only"), token=None) as page:
        yield page


@pytest.fixture(scope="module")
def token_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with _running(tmp_path_factory.mktemp("with_token"), token=TOKEN) as page:
        yield page


@pytest.fixture(scope="module")
def listening_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A page with a token whose voices no test changes: dave stays a stranger, so his utterances keep being kept."""
    with _running(tmp_path_factory.mktemp("listening"), token=TOKEN) as page:
        yield page


def _names(page: Page) -> list[str]:
    status, body = http(f"{page.base}/api/voices")
    assert status == 200, body
    return [row["name"] for row in body["speakers"]]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_without_a_token_the_network_can_read_the_page(open_page: Page) -> None:
    """Reading is what a page on the network is for: the page, the voices, /api/info saying it is read-only (so the
    page can hide its buttons), and /healthz."""
    status, html = http(f"{open_page.base}/")
    assert status == 200 and "<html" in html.lower()
    assert _names(open_page) == ["alice", "bob", "carol"]
    status, info = http(f"{open_page.base}/api/info")
    assert status == 200 and info["read_only"] is True and info["token_required"] is False
    status, health = http(f"{open_page.base}/healthz")
    assert status in (200, 503) and "kitchen" in health["streams"]
    log = open_page.daemon.wait_log(lambda t: "the page is read-only" in t)
    assert "listens on 0.0.0.0 without a token" in log


def test_without_a_token_every_change_is_refused(open_page: Page) -> None:
    """Forget, rename, enroll kept clips and enroll a recording: each is refused with 403 and the documented message,
    even with the page's own header, and the model file and the voices stay as they were."""
    before = _digest(open_page.model)
    attempts = [
        change(open_page.base, "/api/voices/forget", {"speaker": "carol"}),
        change(open_page.base, "/api/voices/rename", {"speaker": "bob", "new_name": "robert"}),
        change(open_page.base, "/api/enroll", {"speaker": "dave", "new": True, "clips": ["x.wav"]}),
        record(open_page.base, "dave", open_page.clip.read_bytes()),
    ]
    for status, body in attempts:
        assert status == 403 and body == {"error": READ_ONLY}, (status, body)
    assert _digest(open_page.model) == before, "a refused change writes nothing"
    assert _names(open_page) == ["alice", "bob", "carol"]


def test_the_rule_is_the_listening_address_not_the_caller(open_page: Page) -> None:
    """Claiming to come from loopback with X-Forwarded-For, a caller finds the page on 0.0.0.0 just as read-only:
    nothing the caller says about itself opens it."""
    status, body = change(
        open_page.base, "/api/voices/forget", {"speaker": "carol"}, extra={"X-Forwarded-For": "127.0.0.1"}
    )
    assert status == 403 and body == {"error": READ_ONLY}
    assert _names(open_page) == ["alice", "bob", "carol"]


def test_with_a_token_the_network_may_change_voices(token_page: Page) -> None:
    """With `[web] token` the page on 0.0.0.0 is not read-only: without the password a change gets 401, with it the
    voice is forgotten, renamed and enrolled, and the model file is rewritten."""
    status, info = http(f"{token_page.base}/api/info")
    assert info["read_only"] is False and info["token_required"] is True
    before = _digest(token_page.model)
    status, body = change(token_page.base, "/api/voices/forget", {"speaker": "carol"})
    assert status == 401 and "a password is needed" in body["error"]
    assert _digest(token_page.model) == before

    status, body = change(token_page.base, "/api/voices/forget", {"speaker": "carol"}, token=TOKEN)
    assert status == 200, body
    status, body = change(token_page.base, "/api/voices/rename", {"speaker": "bob", "new_name": "robert"}, token=TOKEN)
    assert status == 200 and body["speaker"] == "robert", body
    status, body = record(token_page.base, "dave", token_page.clip.read_bytes(), token=TOKEN)
    assert status == 200 and body["speaker"] == "dave", body
    assert _names(token_page) == ["alice", "robert", "dave"]
    assert _digest(token_page.model) != before


PRIVATE = (
    "the kept recordings are private: the page listens on 0.0.0.0 without a password; set [web] token in the "
    "daemon's config.toml to hear and enroll them from the network"
)


def test_without_a_token_the_kept_recordings_are_not_served(open_page: Page) -> None:
    """A guest on the home network could download the clips of guests and family the daemon kept: beyond loopback
    without a password neither their list nor their audio is served."""
    name = open_page.first_kept_clip()
    for path in ("/api/clips", f"/api/clips/{name}"):
        status, body = http(f"{open_page.base}{path}")
        assert status == 403 and body == {"error": PRIVATE}, (path, status, body)


def test_with_a_token_the_kept_recordings_need_it(listening_page: Page) -> None:
    name = listening_page.first_kept_clip()
    for path in ("/api/clips", f"/api/clips/{name}"):
        status, body = http(f"{listening_page.base}{path}")
        assert status == 401 and "a password is needed" in body["error"], (path, status, body)
    status, listing = http(f"{listening_page.base}/api/clips", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (
        status == 200 and listing["enabled"] and any(c["name"] == name for g in listing["groups"] for c in g["clips"])
    )
    request = urllib.request.Request(
        f"{listening_page.base}/api/clips/{name}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.read(4) == b"RIFF"


def test_the_page_plays_a_kept_clip_with_its_password(listening_page: Page) -> None:
    """An <audio> element cannot send the password: the page fetches the clip with it when asked to play."""
    listening_page.first_kept_clip()
    with chromium(DESKTOP) as driver:
        driver.get(f"{listening_page.base}/#unknown")
        wait_until(lambda: driver.find_element(By.ID, "token").is_displayed(), 30, "the password box")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.execute_script("loadClips()")
        listen = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, ".clip button.listen"), 30, "a listen button")
        listen.click()
        source = wait_until(
            lambda: driver.execute_script("const a = document.querySelector('.clip audio'); return a && a.src"),
            30,
            "the clip's audio in the page",
        )
        assert source.startswith("blob:"), source
