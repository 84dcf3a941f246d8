"""The page's HTTP server under abuse, on a real `spkidd run` limited to 1024 open files (issue 11, item 9), and
who may change the voices: a token when one is configured, the page's own header always."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import page_http
from tests.support.browser import wait_until
from tests.support.daemon import REPO, SPKIDD, conversation, file_source, random_model, write_config
from tests.support.mosquitto import free_port, kill_group, wait_port

TOKEN = "correct horse battery staple"
OPEN_FILES = 1024
MAX_CONNECTIONS = 40
"""[web] max_connections, not the default 128: a listener that ignored the setting would hold more."""
FD_SLACK = 8
"""Files the daemon may open meanwhile for its own work (a kept clip, a log line's rotation)."""
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Page:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    model: Path


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A daemon with the page on, a token, and at most 1024 open files (as `ulimit -n 1024`)."""
    tmp = tmp_path_factory.mktemp("web_limits")
    model = random_model(tmp / "voices.safetensors", ["alice", "bob", "carol"])
    wav = conversation(tmp, [("alice", "Hello there.")], lead_s=0.5)
    web_port = free_port()
    extra = (
        f'[embedded_broker]\nport = {free_port()}\nimplementation = "mosquitto"\n'
        f'[web]\nenabled = true\nport = {web_port}\ntoken = "{TOKEN}"\nmax_connections = {MAX_CONNECTIONS}\n'
    )
    sources = file_source(wav)
    config = write_config(tmp / "config.toml", model, sources, 'broker = "embedded"', extra)
    log = tmp / "daemon.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["prlimit", f"--nofile={OPEN_FILES}:{OPEN_FILES}", SPKIDD, "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_port(web_port, lambda: process.poll() is None, timeout=60)
        base = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: page_http.http(f"{base}/healthz")[0] == 200, 60, "the daemon healthy (its source online)")
        yield Page(base, process, log, model)
    finally:
        kill_group(process)


def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Sends `request` as it is; returns what came back before the server closed or `timeout` passed."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(request)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
        return got


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _daemon_pid(process: subprocess.Popen[bytes]) -> int:
    """prlimit execs the daemon, so the child's pid is the daemon's."""
    return process.pid


def _served(connection: http.client.HTTPConnection) -> int:
    """The status of GET /healthz on a kept-alive connection, which stays open (and counted) afterwards."""
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    return response.status


def _refused(sock: socket.socket) -> bool:
    """What a client over the bound sees: the connection closed at once, its request unanswered."""
    try:
        sock.sendall(HEALTHZ)
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_connections_over_the_bound_are_closed_and_the_kept_ones_stay_served(page: Page) -> None:
    """The listener holds `max_connections` open (each answered and kept alive) and closes every one beyond them as
    soon as it is accepted, so a flood of idle clients costs the daemon no more open files than the bound."""
    port = int(page.base.rsplit(":", 1)[1])
    pid = _daemon_pid(page.process)
    before = _open_files(pid)
    kept = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(MAX_CONNECTIONS)]
    flood: list[socket.socket] = []
    try:
        assert [_served(connection) for connection in kept] == [200] * MAX_CONNECTIONS
        for _ in range(1500):
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), 5))
            except OSError:
                break  # the listen backlog is full while the daemon closes the connections over its bound: fine
        assert len(flood) >= MAX_CONNECTIONS, f"only {len(flood)} connections over the bound got through"
        assert all(_refused(sock) for sock in flood), "every connection over the bound is closed unanswered"
        assert page.process.poll() is None, "the daemon survived 1,500 idle connections"
        assert _open_files(pid) <= before + MAX_CONNECTIONS + FD_SLACK < OPEN_FILES - 100, (
            f"{_open_files(pid)} files open: connections over the bound are closed, not held open"
        )
        assert [_served(connection) for connection in kept] == [200] * MAX_CONNECTIONS, "the kept ones still work"
        assert f"web: {MAX_CONNECTIONS} connections open, refusing more" in page.log.read_text()
        kept.pop().close()
        wait_until(lambda: _raw(port, HEALTHZ).startswith(b"HTTP/1.1 200 "), 10, "a connection freed for a new one")
    finally:
        for connection in kept:
            connection.close()
        for sock in flood:
            sock.close()


def test_oversized_headers_and_bare_newlines(page: Page) -> None:
    port = int(page.base.rsplit(":", 1)[1])
    status, health = page_http.http(f"{page.base}/healthz")
    assert status == 200 and "streams" in health, "the page answers again once a flood is gone"

    oversized = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    answer = _raw(port, oversized)
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), f"a 20-KB header gets a 4xx: {answer[:80]!r}"

    bare = _raw(port, b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", bare), f"lines must end in CRLF: bare \\n is refused: {bare[:80]!r}"

    log = page.log.read_text()
    assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]


def test_changing_voices_needs_the_token_and_the_page_header(page: Page) -> None:
    before = hashlib.sha256(page.model.read_bytes()).hexdigest()
    forget = json.dumps({"speaker": "carol"}).encode()
    url = f"{page.base}/api/voices/forget"
    json_type = {"Content-Type": "application/json"}

    status, body = page_http.http(url, forget, {**json_type, "X-Spkidd-Request": "1"})
    assert status == 401 and "password is needed" in body["error"] and "[web] token" in body["error"]
    status, body = page_http.http(url, forget, {**json_type, "X-Spkidd-Request": "1", "Authorization": "Bearer nope"})
    assert status == 401 and "wrong password" in body["error"]
    status, body = page_http.http(url, forget, {**json_type, "Authorization": f"Bearer {TOKEN}"})
    assert status == 403 and "X-Spkidd-Request" in body["error"], "another site's form cannot change voices"
    assert hashlib.sha256(page.model.read_bytes()).hexdigest() == before, "a refused change changes nothing"
    assert TOKEN not in page.log.read_text(), "the token is never logged"

    status, body = page_http.http(
        url, forget, {**json_type, "X-Spkidd-Request": "1", "Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200 and [s["name"] for s in body["speakers"]] == ["alice", "bob"]
    status, voices = page_http.http(f"{page.base}/api/voices")
    assert [s["name"] for s in voices["speakers"]] == ["alice", "bob"]
