"""The page as another device of the household reaches it (a phone on the home network), in Debian's headless
Chromium against a real `spkidd run`: over https (`[web] tls_cert`) the browser gives it the microphone and a voice
recorded there is enrolled; over plain http it has none, says so, and a recording file chosen instead is enrolled.

The phone's view of the network is made with Chromium's host resolver: `house.test` is mapped to 127.0.0.1, so the
browser treats the page as another machine's (no loopback privileges, no secure context over http) while every
byte stays on loopback."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from spkidd.modelfile import load_model
from spkidd.synthetic import SENTENCES, synth_speech
from tests.support.browser import PHONE, chromium, screenshot, wait_until
from tests.support.daemon import DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import free_port, wait_port
from tests.support.tls import self_signed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TOKEN = "hallway lamp 7"
NAME = "house.test"
AS_ANOTHER_DEVICE = (f"--host-resolver-rules=MAP {NAME} 127.0.0.1",)


@dataclass
class Page:
    url: str
    """The page as the phone opens it (through `house.test`)."""
    daemon: DaemonProcess
    model: Path


@contextlib.contextmanager
def _running(tmp: Path, tls: bool) -> Iterator[Page]:
    model = random_model(tmp / "voices.safetensors", ["alice", "bob", "carol"])
    clip = conversation(tmp, [("alice", "Good morning, the kettle is on.")], lead_s=0.3)
    port = free_port()
    web = f'[web]\nenabled = true\nport = {port}\ntoken = "{TOKEN}"\n'
    if tls:
        cert, key = self_signed(tmp, names=(NAME,))
        web += f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    extra = f'[embedded_broker]\nport = {free_port()}\nimplementation = "mosquitto"\n{web}'
    config = write_config(tmp / "config.toml", model, file_source(clip), 'broker = "embedded"', extra)
    daemon = DaemonProcess(config, tmp / "daemon.log")
    try:
        wait_port(port, lambda: daemon.process.poll() is None, timeout=90)
        yield Page(f"{'https' if tls else 'http'}://{NAME}:{port}", daemon, model)
        assert "Traceback" not in daemon.text(), daemon.text()[-3000:]
    finally:
        daemon.kill()


def _voice(tmp: Path, voice: str) -> Path:
    """Four sentences of `voice` with pauses, as one WAV (about 15 s)."""
    parts = []
    for i, sentence in enumerate(SENTENCES[:4]):
        audio, rate = sf.read(str(synth_speech(voice, sentence, tmp / f"{voice}{i}.wav")), dtype="float32")
        parts += [audio, np.zeros(rate // 2, np.float32)]
    path = tmp / f"{voice}.wav"
    sf.write(path, np.concatenate(parts), rate, subtype="PCM_16")
    return path


def _text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _enroll_with_password(driver: WebDriver, name: str) -> str:
    wait_until(lambda: driver.find_element(By.ID, "token").is_displayed(), 30, "the password box")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "record-name").send_keys(name)
    driver.find_element(By.ID, "record-enroll").click()
    return wait_until(lambda: _text(driver, "#record-message.ok"), 120, "the enrollment report")


def test_over_https_another_device_gets_the_microphone(tmp_path: Path) -> None:
    microphone = _voice(tmp_path, "erin")
    with _running(tmp_path, tls=True) as page:
        assert page.daemon.wait_log(lambda t: f"web page on https://127.0.0.1:{page.url.rpartition(':')[2]}/" in t)
        flags = (*AS_ANOTHER_DEVICE, "--ignore-certificate-errors")  # the household accepted its certificate once
        with chromium(PHONE, microphone=microphone, flags=flags) as driver:
            driver.get(f"{page.url}/#record")
            wait_until(lambda: "north wind" in _text(driver, "#prompt"), 30, "a text to read")
            assert driver.execute_script("return window.isSecureContext") is True
            assert driver.find_element(By.ID, "record-start").is_enabled()
            assert not driver.find_element(By.ID, "record-unavailable").is_displayed()
            assert not driver.find_element(By.ID, "banner").is_displayed(), "over https nothing to warn about"
            driver.find_element(By.ID, "record-start").click()
            wait_until(lambda: _text(driver, "#record-message").startswith("Recording"), 30, "the recording to start")
            wait_until(lambda: float(_text(driver, "#record-time").split()[0]) >= 12, 60, "12 s of recording")
            driver.find_element(By.ID, "record-stop").click()
            wait_until(lambda: driver.find_element(By.ID, "record-enroll").is_enabled(), 30, "the recording to end")
            message = _enroll_with_password(driver, "erin")
        assert message.startswith("Enrolled erin from "), message
        assert "erin" in load_model(page.model).labels


def test_over_plain_http_another_device_enrolls_a_recording_file(tmp_path: Path) -> None:
    memo = tmp_path / "voice memo.m4a"
    wav = _voice(tmp_path, "frank")
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(memo)], check=True)
    with _running(tmp_path, tls=False) as page:
        with chromium(PHONE, flags=AS_ANOTHER_DEVICE) as driver:
            driver.get(f"{page.url}/#record")
            wait_until(lambda: driver.find_element(By.ID, "record-unavailable").is_displayed(), 30, "the reason")
            assert driver.execute_script("return window.isSecureContext") is False
            assert not driver.find_element(By.ID, "record-start").is_enabled(), "no microphone to start"
            assert "The password crosses the network unencrypted" in _text(driver, "#banner")
            assert "over https ([web] tls_cert)" in _text(driver, "#record-unavailable")
            driver.find_element(By.ID, "record-file").send_keys(str(memo))
            chosen = wait_until(lambda: _text(driver, "#record-message"), 30, "the file to be taken")
            assert chosen.startswith("Chose voice memo.m4a"), chosen
            assert driver.find_element(By.ID, "record-playback").is_displayed()
            driver.execute_script("document.getElementById('record-unavailable').scrollIntoView()")
            screenshot(driver, tmp_path, "web-record-phone.png")
            message = _enroll_with_password(driver, "frank")
        assert message.startswith("Enrolled frank from "), message
        assert "frank" in load_model(page.model).labels
