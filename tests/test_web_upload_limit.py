"""The page's upload limit on a real `spkidd run` (127.0.0.1, no token): [web] max_upload_mb counts megabytes of
10^6 bytes as the recording arrives, answers 413 as soon as it is passed and leaves no temporary file behind; the
page refuses a recording over the limit before sending it. Speaker names get the answer `spkidd enroll` gives."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from selenium.webdriver.common.by import By

from spkidd import SAMPLE_RATE
from spkidd.enrollment import enroll_audio
from spkidd.modelfile import load_model
from spkidd.synthetic import SENTENCES, synth_audio
from tests.support.browser import DESKTOP, chromium, wait_until
from tests.support.daemon import DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import free_port, wait_port
from tests.support.multipart import recording_form
from tests.support.page_http import PAGE_HEADER, change, http

MAX_MB = 0.2
MAX_BYTES = 200_000
"""MAX_MB in bytes: megabytes of 10^6 bytes, as [unknown_clips] max_mb (0.2 MiB would be 209,715)."""
BOUNDARY = "spkiddlimit"


@dataclass
class Page:
    base: str
    port: int
    model: Path
    temp: Path
    work: Path
    daemon: DaemonProcess

    def uploads_left(self) -> list[str]:
        """Temporary upload folders and files the daemon left in its TMPDIR."""
        return [p.name for p in self.temp.iterdir() if p.name.startswith("spkidd-upload-")]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    work = tmp_path_factory.mktemp("web_upload_limit")
    model = random_model(work / "voices.safetensors", ["alice", "bob"])
    wav = conversation(work, [("alice", "Hello there.")], lead_s=0.5)
    temp = work / "tmp"
    temp.mkdir()
    web_port = free_port()
    extra = (
        f'[embedded_broker]\nport = {free_port()}\nimplementation = "mosquitto"\n'
        f"[web]\nenabled = true\nport = {web_port}\nmax_upload_mb = {MAX_MB}\n"
    )
    sources = file_source(wav)
    config = write_config(work / "config.toml", model, sources, 'broker = "embedded"', extra)
    daemon = DaemonProcess(config, work / "daemon.log", env={"TMPDIR": str(temp)})
    try:
        wait_port(web_port, lambda: daemon.process.poll() is None, timeout=90)
        yield Page(f"http://127.0.0.1:{web_port}", web_port, model, temp, work, daemon)
        assert "Traceback" not in daemon.text(), daemon.text()[-3000:]
    finally:
        daemon.kill()


def _form(audio: bytes, speaker: str = "erin", new: str = "true") -> bytes:
    return recording_form(audio, {"speaker": speaker, "new": new, "force": "false"}, BOUNDARY)


def _upload(page: Page, audio: bytes, speaker: str = "erin") -> tuple[int, dict]:
    headers = {**PAGE_HEADER, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return http(f"{page.base}/api/record", _form(audio, speaker), headers, timeout=60)


def _speech_wav(path: Path, size: int) -> bytes:
    """A WAV of erin's speech padded with silence to `size` bytes (header included)."""
    speech = synth_audio("erin", SENTENCES[0])
    samples = (size - 44) // 2
    assert len(speech) < samples, "the speech fits under the limit"
    sf.write(path, np.pad(speech, (0, samples - len(speech))), SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    assert len(data) == size
    return data


def test_the_page_is_told_the_limit(page: Page) -> None:
    with urllib.request.urlopen(f"{page.base}/api/info", timeout=10) as response:
        assert json.loads(response.read())["max_upload_mb"] == MAX_MB


def test_an_upload_just_over_the_limit_is_refused_with_413_and_leaves_no_file(page: Page) -> None:
    before = page.model.read_bytes()
    fields = len(b"erin") + len(b"true") + len(b"false")
    status, body = _upload(page, b"\0" * (MAX_BYTES - fields + 1))
    assert status == 413, body
    assert body["error"].startswith(f"the recording is larger than {MAX_MB:g} MB"), body
    assert "[web] max_upload_mb" in body["error"]
    assert page.uploads_left() == []
    assert page.model.read_bytes() == before


def test_an_upload_under_the_limit_is_enrolled(page: Page) -> None:
    fields = len(b"erin") + len(b"true") + len(b"false")
    status, body = _upload(page, _speech_wav(page.work / "erin.wav", MAX_BYTES - fields - 1))
    assert status == 200, body
    assert body["speaker"] == "erin" and "erin" in [s["name"] for s in body["speakers"]]
    assert "erin" in load_model(page.model).labels
    assert page.uploads_left() == []


def test_a_huge_upload_is_stopped_at_the_limit_while_it_is_still_being_sent(page: Page) -> None:
    """A client that says 100 MB are coming gets its 413 after the first 0.2 MB, the partial file already gone."""
    head = _form(b"")[: -len(f"\r\n--{BOUNDARY}--\r\n")]
    request = (
        f"POST /api/record HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Spkidd-Request: 1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000000\r\n\r\n"
    ).encode() + head
    with socket.create_connection(("127.0.0.1", page.port), 10) as sock:
        sock.sendall(request)
        for _ in range(3 * MAX_BYTES // 65536):
            sock.sendall(b"\0" * 65536)
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert page.uploads_left() == [], "deleted before the answer, with the client still connected"


def test_names_get_the_answer_spkidd_enroll_gives(page: Page) -> None:
    bundle = load_model(page.model)
    for name in (" alice", "alice ", "x" * 41):
        with pytest.raises(ValueError) as cli:
            enroll_audio(bundle, name, {"clip": synth_audio("erin", SENTENCES[0])})
        status, body = _upload(page, _speech_wav(page.work / "name.wav", 180_000), speaker=name)
        assert (status, body["error"]) == (400, str(cli.value))
        status, body = change(page.base, "/api/voices/rename", {"speaker": "bob", "new_name": name})
        assert (status, body["error"]) == (400, str(cli.value))
    assert load_model(page.model).labels == bundle.labels, "no second alice, no renamed bob"


def test_the_page_refuses_a_recording_over_the_limit_before_sending_it(page: Page) -> None:
    with chromium(DESKTOP, microphone=page.work / "conversation.wav") as driver:
        driver.get(f"{page.base}/#record")
        wait_until(lambda: driver.execute_script("return info.max_upload_mb") == MAX_MB, 30, "the page's info")
        driver.find_element(By.ID, "record-start").click()
        wait_until(lambda: driver.find_element(By.ID, "record-stop").is_enabled(), 30, "the recording to start")
        time.sleep(1.0)
        driver.find_element(By.ID, "record-stop").click()
        wait_until(lambda: driver.find_element(By.ID, "record-enroll").is_enabled(), 30, "the recording to finish")
        # A recording of 0.25 MB takes a minute or more of speech; its bytes stand in for one.
        driver.execute_script("recording.blob = new Blob([new Uint8Array(250000)], { type: 'audio/webm' })")
        driver.find_element(By.ID, "record-name").send_keys("frank")
        driver.find_element(By.ID, "record-enroll").click()
        message = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "#record-message.error").text, 10)
        assert message.startswith(f"The recording is 0.25 MB, more than the {MAX_MB:g} MB this page accepts"), message
        assert "[web] max_upload_mb" in message
        sent = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert not [url for url in sent if "/api/record" in url], "nothing was uploaded"
    assert "frank" not in load_model(page.model).labels
