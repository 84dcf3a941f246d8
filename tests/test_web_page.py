"""The household's page in a real browser (Debian's headless Chromium through Selenium) against a real
`spkidd run` with a looping file source and a real Mosquitto (issue 12).

One daemon serves the whole module; the tests run in order and build on each other as a household would: watch the
live view, try bad input, enroll a kept unknown clip, forget and rename, record a new voice with the microphone. A
test that needs a voice an earlier one enrolls enrolls it itself when run alone. The conversation loops: alice, dave,
bob, erin — dave and erin are strangers to the household model.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
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
from selenium.webdriver.remote.webdriver import WebDriver

from spkidd.modelfile import load_model
from spkidd.synthetic import SENTENCES, synth_speech
from tests.support import page_http
from tests.support.browser import DESKTOP, PHONE, chromium, screenshot, wait_until
from tests.support.daemon import DaemonProcess, conversation, file_source, write_config
from tests.support.mosquitto import Mosquitto, free_port, kill_group, wait_port
from tests.support.multipart import recording_form

pytestmark = pytest.mark.slow

TURNS = [
    ("alice", SENTENCES[12]),
    ("dave", f"{SENTENCES[14]} {SENTENCES[15]}"),  # a long turn: enough speech to enroll from one loop's clips
    ("bob", SENTENCES[13]),
    ("erin", SENTENCES[15]),
]
LEAD_S, GAP_S = 1.0, 1.2
LOOP_ORDER = ["alice", "unknown", "bob", "unknown"]


@dataclass
class House:
    base: str
    port: int
    model: Path
    clips: Path
    events: Path
    spans: dict[str, tuple[float, float]]
    loop_s: float
    daemon: DaemonProcess
    work: Path

    def turn_of(self, start_s: float) -> str | None:
        """Whose turn of the looping conversation an utterance starting at `start_s` (stream seconds) is in."""
        at = start_s % self.loop_s
        for voice, (begin, end) in self.spans.items():
            if begin - 0.5 <= at <= end:
                return voice
        return None

    def finals(self, since: float = 0.0) -> list[dict]:
        """Final events published over MQTT, emitted after wall-clock `since`."""
        out = []
        for line in self.events.read_text().splitlines():
            topic, _, payload = line.partition(" ")
            if topic.endswith("/event"):
                event = json.loads(payload)
                if event["final"] and _epoch(event["time"]) > since:
                    out.append(event)
        return out


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def house(household_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[House]:
    work = tmp_path_factory.mktemp("web_page")
    model = work / "voices.safetensors"
    shutil.copy(household_model, model)
    wav = conversation(work, TURNS, lead_s=LEAD_S, gap_s=GAP_S)
    spans, t = {}, LEAD_S
    for i, (voice, _) in enumerate(TURNS):
        duration = sf.info(str(work / f"turn{i}.wav")).duration
        spans[voice] = (t, t + duration)
        t += duration + GAP_S
    broker = Mosquitto(work)
    broker.start()
    events = work / "mqtt.txt"
    with events.open("wb") as out:
        subscriber = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "spkidd/testhouse/+/event", "-F",
             "%t %p"], stdout=out, start_new_session=True,
        )  # fmt: skip
    web_port = free_port()
    sources = file_source(wav)
    extra = f'[unknown_clips]\nfolder = "{work / "unknown"}"\n[web]\nenabled = true\nport = {web_port}\n'
    config = write_config(work / "config.toml", model, sources, f'broker = "external"\nport = {broker.port}', extra)
    daemon = DaemonProcess(config, work / "daemon.log")
    try:
        wait_port(web_port, lambda: daemon.process.poll() is None, timeout=90)
        yield House(
            f"http://127.0.0.1:{web_port}", web_port, model, work / "unknown", events, spans,
            sf.info(str(wav)).duration, daemon, work,
        )  # fmt: skip
        assert "Traceback" not in daemon.text(), daemon.text()[-3000:]
    finally:
        daemon.kill()
        kill_group(subscriber)
        broker.stop()


def _text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _recent_finals(driver: WebDriver) -> list[str]:
    """The page's list of recent finals, oldest first."""
    items = driver.find_elements(By.CSS_SELECTOR, ".source[data-source=kitchen] .recent li")
    return [str(li.get_attribute("data-speaker")) for li in reversed(items)]


def _dave_clips(house: House) -> list[str]:
    return _clips_of(house, "dave")


def _clips_of(house: House, voice: str) -> list[str]:
    """The kept clips of `voice`'s turn in the earliest loop that has any (the gate may cut a turn in two)."""
    by_loop: dict[int, list[str]] = {}
    if not house.clips.is_dir():
        return []
    for sidecar in sorted(house.clips.glob("*.json")):
        start = json.loads(sidecar.read_text())["start"]
        if house.turn_of(start) == voice:
            by_loop.setdefault(int(start // house.loop_s), []).append(sidecar.with_suffix(".wav").name)
    return by_loop[min(by_loop)] if by_loop else []


def _state(house: House) -> tuple[str, list[str]]:
    """The model file's hash and the kept clips (none before the daemon keeps its first)."""
    clips = sorted(p.name for p in house.clips.iterdir()) if house.clips.is_dir() else []
    return hashlib.sha256(house.model.read_bytes()).hexdigest(), clips


def _unchanged(before: tuple[str, list[str]], house: House) -> bool:
    """The model file as it was and every kept clip still there; the replayed conversation goes on meanwhile and
    may keep new clips (a CI run failed on a clip kept while the test typed)."""
    model, clips = _state(house)
    return model == before[0] and set(before[1]) <= set(clips)


def _ensure_enrolled(house: House, voice: str) -> None:
    """A test that needs `voice` in the model enrolls it through the recording API when the tests before it in the
    module have not, so that it also passes when run alone."""
    if voice in load_model(house.model).labels:
        return
    sentences = " ".join(SENTENCES[:3])
    speech = synth_speech(voice, sentences, house.work / f"{voice}_enroll.wav").read_bytes()
    boundary = "spkiddensure"
    body = recording_form(speech, {"speaker": voice, "new": "true", "force": "false"}, boundary, f"{voice}.wav")
    headers = {**page_http.PAGE_HEADER, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, answer = page_http.http(f"{house.base}/api/record", body, headers, timeout=60)
    assert status == 200, answer


def _wait_for_final(house: House, speaker: str, turn: str, since: float, timeout: float = 90.0) -> dict:
    def found() -> dict | None:
        for event in house.finals(since):
            if event["speaker"] == speaker and house.turn_of(event["start"]) == turn:
                return event
        return None

    return wait_until(found, timeout, f"a final {speaker!r} over MQTT in {turn}'s turn")


def _finals_through_a_whole_turn(house: House, voice: str, model: dict) -> list[dict]:
    """The finals `model` scored, once they reach past a whole turn of `voice` (a loop and a turn's length on from
    the first of them): the gate may split the turn, so all its finals are there. A changed model takes effect at
    the next utterance, so these are finals of utterances heard wholly after the change."""
    begin, end = house.spans[voice]

    def through() -> list[dict] | None:
        finals = [e for e in house.finals() if e["model"] == model]
        if finals and max(e["start"] for e in finals) >= min(e["start"] for e in finals) + house.loop_s + end - begin:
            return finals
        return None

    return wait_until(through, 2 * house.loop_s + 60, f"a whole turn of {voice} in the finals")


def test_live_events_are_pushed_as_they_happen(house: House) -> None:
    """Each event reaches the open stream while it is current (a buffered response would deliver them seconds late,
    or at its end). The bound is loose on purpose: how fast is measured by a benchmark, not asserted under a CI
    machine's load."""
    delays = page_http.live_delays(house.port, 6, timeout=60)
    assert max(delays) < 1.0, f"event-to-browser delays {delays}"


def test_the_live_view_names_the_speakers_in_turn(house: House) -> None:
    with chromium(DESKTOP) as driver:
        driver.get(f"{house.base}/#live")
        wait_until(lambda: len(_recent_finals(driver)) >= 6, 120, "six finals on the live view")
        finals = _recent_finals(driver)
        seen = [s for i, s in enumerate(finals) if i == 0 or finals[i - 1] != s]
        rotations = [LOOP_ORDER[k:] + LOOP_ORDER[:k] for k in range(4)]
        assert any(seen[:4] == r for r in rotations), f"finals on the page in turn: {finals}"
        assert _text(driver, ".source[data-source=kitchen] .status") == "online"
        segments = driver.find_elements(By.CSS_SELECTOR, ".source[data-source=kitchen] .timeline .segment")
        assert {s.get_attribute("data-speaker") for s in segments} >= {"alice", "bob", "unknown"}
        wait_until(lambda: _text(driver, ".source[data-source=kitchen] .speaker") in ("alice", "bob"), 60)
        screenshot(driver, house.work, "web-live-desktop.png")
    with chromium(PHONE) as driver:
        driver.get(f"{house.base}/#live")
        wait_until(lambda: len(_recent_finals(driver)) >= 4, 30, "the finals so far on a phone")
        wait_until(lambda: _text(driver, ".source[data-source=kitchen] .speaker") in ("alice", "bob"), 60)
        screenshot(driver, house.work, "web-live-phone.png")


def test_bad_input_gets_a_clear_message_and_changes_nothing(house: House) -> None:
    wait_until(lambda: _dave_clips(house), 120, "a kept clip of dave")
    before = _state(house)
    with chromium(DESKTOP) as driver:
        driver.get(f"{house.base}/#unknown")
        boxes = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, 'input[name="clip"]'), 60, "kept clips")
        metas = [m.text for m in driver.find_elements(By.CSS_SELECTOR, ".clip .meta")]
        assert any("closest voices: " in m for m in metas), metas
        assert not any("%" in m for m in metas), f"a stranger's clip must not read as '97 % mom': {metas}"
        name = driver.find_element(By.ID, "enroll-name")
        button = driver.find_element(By.ID, "enroll-button")

        def attempt(speaker: str) -> str:
            name.clear()
            name.send_keys(speaker)
            driver.execute_script("document.getElementById('enroll-message').textContent = ''")
            button.click()
            return wait_until(lambda: _text(driver, "#enroll-message.error"), 30, "an error message")

        assert attempt("zed") == "select at least one clip"
        boxes[0].click()
        assert attempt("") == "the speaker needs a name"
        assert attempt("alice") == "there is already a speaker called 'alice'"
        assert "is reserved" in attempt("unknown")
    assert _unchanged(before, house)

    status, body = page_http.change(house.base, "/api/enroll", {"speaker": "x", "clips": ["../voices.safetensors"]})
    assert status == 400 and body["error"] == "'../voices.safetensors' is not the name of a kept clip"
    try:
        urllib.request.urlopen(f"{house.base}/api/clips/..%2Fvoices.safetensors", timeout=10)
        raise AssertionError("a path outside the clips folder was served")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400 and "not the name of a kept clip" in json.loads(exc.read())["error"]
    with socket.create_connection(("127.0.0.1", house.port), 10) as sock:
        sock.sendall(b"GET /static/../../../config.toml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = sock.recv(4096)
    assert re.match(rb"HTTP/1\.1 (403|404) ", answer), answer[:60]

    boundary = "spkiddtest"
    body_bytes = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="speaker"\r\n\r\nzed\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="notes.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nthis is not audio at all\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**page_http.PAGE_HEADER, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, body = page_http.http(f"{house.base}/api/record", body_bytes, headers, timeout=60)
    assert status == 400 and body["error"].startswith("the upload is not audio")
    assert _unchanged(before, house), "nothing changed: the model file and the clips are as they were"


def test_a_site_whose_name_points_at_loopback_can_change_nothing(house: House) -> None:
    """DNS rebinding: a site that points its own name at 127.0.0.1 is same-origin with itself, so its scripts could
    send the page's header; without a password the page takes changes and serves kept clips only when opened by a
    loopback name or address."""
    wait_until(lambda: _dave_clips(house), 120, "a kept clip of dave")
    before = _state(house)
    rebound = {"Host": f"rebind.test:{house.port}"}
    status, body = page_http.change(house.base, "/api/voices/forget", {"speaker": "alice"}, extra=rebound)
    assert status == 403 and body["error"].startswith("refused: the page was opened as 'rebind.test'"), body
    status, body = page_http.http(f"{house.base}/api/clips/{_dave_clips(house)[0]}", headers=rebound)
    assert status == 403 and "only a page opened at 127.0.0.1 or localhost" in body["error"], body
    assert _unchanged(before, house)
    for host in (f"localhost:{house.port}", f"127.0.0.1:{house.port}"):
        status, body = page_http.http(f"{house.base}/api/clips", headers={"Host": host})
        assert status == 200 and body["groups"], (host, body)


def test_a_kept_unknown_clip_is_enrolled_from_the_page_and_then_named(house: House) -> None:
    dave = wait_until(lambda: _dave_clips(house), 60, "a kept clip of dave")
    for size, label in ((PHONE, "phone"), (DESKTOP, "desktop")):
        with chromium(size) as driver:
            driver.get(f"{house.base}/#unknown")
            wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, 'input[name="clip"]'), 60, "kept clips")
            screenshot(driver, house.work, f"web-unknown-{label}.png")
    with chromium(DESKTOP) as driver:
        driver.get(f"{house.base}/#unknown")
        for clip in dave:
            wait_until(lambda: driver.find_element(By.CSS_SELECTOR, f'input[value="{clip}"]'), 30).click()  # noqa: B023
        driver.find_element(By.ID, "enroll-name").send_keys("dave")
        driver.find_element(By.ID, "enroll-button").click()
        message = wait_until(lambda: _text(driver, "#enroll-message.ok"), 120, "the enrollment report")
        enrolled_at = time.time()
        assert message.startswith("Enrolled dave from "), message
        warnings = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#enroll-warnings li")]
        assert any("s of speech" in w for w in warnings), f"enrollment's warnings are shown: {warnings}"
        assert "dave" in load_model(house.model).labels, "the model file has dave"
        assert not any((house.clips / clip).exists() for clip in dave), "enrolled clips leave the unknown list"
        event = _wait_for_final(house, "dave", "dave", enrolled_at)
        assert event["confidence"] > 0
        wait_until(lambda: "dave" in _recent_finals(driver), 30, "dave named on the live view")
    assert "SIGHUP" not in house.daemon.text() and "reloaded" not in house.daemon.text(), "no reload was needed"


def test_forget_and_rename_from_the_voices_page(house: House) -> None:
    _ensure_enrolled(house, "dave")
    with chromium(DESKTOP) as driver:
        driver.get(f"{house.base}/#voices")
        forget = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-speaker="dave"] .forget'), 30)
        forget.click()
        assert forget.text == "Really forget?", "one click alone forgets nothing"
        forget.click()
        wait_until(lambda: _text(driver, "#voices-message.ok") == "dave is forgotten", 30)
        assert not driver.find_elements(By.CSS_SELECTOR, 'tr[data-speaker="dave"]')
        bob = driver.find_element(By.CSS_SELECTOR, 'tr[data-speaker="bob"]')
        bob.find_element(By.CSS_SELECTOR, ".new-name").send_keys("robert")
        bob.find_element(By.CSS_SELECTOR, ".rename").click()
        wait_until(lambda: _text(driver, "#voices-message.ok") == "bob is now called robert", 30)
        changed_at = time.time()
        assert driver.find_elements(By.CSS_SELECTOR, 'tr[data-speaker="robert"]')
    labels = load_model(house.model).labels
    assert "dave" not in labels and "robert" in labels and "bob" not in labels
    _wait_for_final(house, "unknown", "dave", changed_at)
    renamed = _wait_for_final(house, "robert", "bob", changed_at)  # scored by the model without dave
    finals = _finals_through_a_whole_turn(house, "dave", renamed["model"])
    named = [e["start"] for e in finals if house.turn_of(e["start"]) == "dave" and e["speaker"] == "dave"]
    assert named == [], f"a forgotten voice is never named again in its turns: {named}"


def test_a_voice_recorded_with_the_microphone_is_enrolled_and_then_recognized(house: House) -> None:
    parts = []
    for i, sentence in enumerate(SENTENCES[:4]):
        audio, rate = sf.read(str(synth_speech("erin", sentence, house.work / f"mic{i}.wav")), dtype="float32")
        parts += [audio, np.zeros(rate // 2, np.float32)]
    microphone = house.work / "voice.wav"
    sf.write(microphone, np.concatenate(parts), rate, subtype="PCM_16")
    with chromium(DESKTOP, microphone=microphone) as driver:
        driver.get(f"{house.base}/#record")
        wait_until(lambda: "north wind" in _text(driver, "#prompt"), 30, "a text to read")
        driver.find_element(By.ID, "record-start").click()
        wait_until(lambda: _text(driver, "#record-message").startswith("Recording"), 30, "the recording to start")
        levels = []
        for _ in range(60):
            levels.append(float(driver.find_element(By.ID, "level").get_attribute("value") or 0))
            time.sleep(0.25)
        assert max(levels) > 0.05, "the level meter moves while the voice plays"
        driver.find_element(By.ID, "record-stop").click()
        wait_until(lambda: driver.find_element(By.ID, "record-enroll").is_enabled(), 30, "the recording to finish")
        driver.find_element(By.ID, "record-name").send_keys("erin")
        driver.find_element(By.ID, "record-enroll").click()
        message = wait_until(lambda: _text(driver, "#record-message.ok"), 120, "the enrollment report")
        enrolled_at = time.time()
        assert message.startswith("Enrolled erin from "), message
    assert "erin" in load_model(house.model).labels
    _wait_for_final(house, "erin", "erin", enrolled_at)


def test_speech_of_another_voice_is_not_added_to_a_speaker_unless_forced(house: House) -> None:
    """Last in the module: the forced additions change alice's voice print. Erin (enrolled from the microphone
    above, or here when run alone) still has clips kept from before; they and a recording of her are refused as
    alice's until forced."""
    clip = wait_until(lambda: _clips_of(house, "erin"), 60, "a kept clip of erin")[0]
    _ensure_enrolled(house, "erin")
    speech = synth_speech("erin", SENTENCES[5], house.work / "erin_more.wav").read_bytes()

    def upload(force: bool) -> tuple[int, dict]:
        boundary = "spkiddforce"
        fields = {"speaker": "alice", "new": "false", "force": str(force).lower()}
        body = recording_form(speech, fields, boundary, "erin.wav")
        headers = {**page_http.PAGE_HEADER, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        return page_http.http(f"{house.base}/api/record", body, headers, timeout=60)

    before = _state(house)
    status, body = upload(force=False)
    assert status == 409 and body["error"].startswith("these clips sound more like erin"), body
    assert _unchanged(before, house)

    with chromium(DESKTOP) as driver:
        driver.get(f"{house.base}/#unknown")
        wait_until(lambda: driver.find_element(By.CSS_SELECTOR, f'input[value="{clip}"]'), 30).click()
        driver.find_element(By.ID, "enroll-mode-existing").click()
        driver.find_element(By.CSS_SELECTOR, '#enroll-existing option[value="alice"]').click()
        driver.find_element(By.ID, "enroll-button").click()
        refused = wait_until(lambda: _text(driver, "#enroll-message.error"), 120, "the refusal")
        assert refused.startswith("these clips sound more like erin"), refused
        assert _unchanged(before, house)
        driver.find_element(By.ID, "enroll-force").click()
        driver.find_element(By.ID, "enroll-button").click()
        added = wait_until(lambda: _text(driver, "#enroll-message.ok"), 120, "the report")
        assert added.startswith("Updated alice from "), added
    assert load_model(house.model).enrollment["alice"]["source"] == "training+enrolled"
    status, body = upload(force=True)
    assert status == 200 and body["updated"] and body["speaker"] == "alice", body


def test_a_new_name_for_a_known_voice_is_refused_unless_forced(house: House) -> None:
    """Erin's voice under a second name would leave neither name said again: the recording API refuses it with the
    reason, and takes it with force (and a warning); the page sends its force box for a new speaker too."""
    _ensure_enrolled(house, "erin")
    speech = synth_speech("erin", SENTENCES[6], house.work / "erin_again.wav").read_bytes()

    def upload(force: bool) -> tuple[int, dict]:
        fields = {"speaker": "Erin Two", "new": "true", "force": str(force).lower()}
        headers = {**page_http.PAGE_HEADER, "Content-Type": "multipart/form-data; boundary=spkiddtwo"}
        form = recording_form(speech, fields, "spkiddtwo", "erin.wav")
        return page_http.http(f"{house.base}/api/record", form, headers, timeout=60)

    before = _state(house)
    status, body = upload(force=False)
    assert status == 409 and "already pass as erin" in body["error"] and "own voice" in body["error"], body
    assert _unchanged(before, house)
    status, body = upload(force=True)
    assert status == 200 and body["speaker"] == "Erin Two" and not body["updated"], body
    assert any("may confuse Erin Two and erin" in w for w in body["warnings"]), body["warnings"]
    with chromium(DESKTOP) as driver:
        driver.get(f"{house.base}/#unknown")
        wait_until(lambda: driver.find_element(By.ID, "enroll-force"), 30).click()
        target = driver.execute_script(
            "return enrollTarget('enroll-mode', $('#enroll-name'), $('#enroll-existing'), $('#enroll-force'))"
        )
        assert target["new"] is True and target["force"] is True, target
