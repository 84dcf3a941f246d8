"""The household page's HTTP API as a test calls it: reading, and changes sent as the page's own scripts send them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from typing import Any

from tests.support.multipart import recording_form

PAGE_HEADER = {"X-Spkidd-Request": "1"}
"""What the page's own scripts add to every change (spkidd/web/auth.py)."""


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """(status, JSON body, or the text when it is not JSON); a POST when `data` is given."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def change(
    base: str, path: str, body: dict[str, Any], token: str | None = None, extra: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A JSON change (forget, rename, enroll) as the page sends it, with the password when `token` is given."""
    headers = {"Content-Type": "application/json", **PAGE_HEADER, **(extra or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http(f"{base}{path}", json.dumps(body).encode(), headers)


def record(base: str, speaker: str, wav: bytes, token: str | None = None, new: bool = True) -> tuple[int, Any]:
    """A recording enrolled through /api/record, as the page's "Record a voice" posts it."""
    boundary = "spkiddtestboundary"
    form = recording_form(wav, {"speaker": speaker, "new": "true" if new else "false"}, boundary)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **PAGE_HEADER}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http(f"{base}/api/record", form, headers, timeout=120)


def live_delays(port: int, events: int, timeout: float = 120.0) -> list[float]:
    """Seconds from the live hub's stamp (`now`) to arrival, for the first `events` event messages of the page's
    live stream (GET /api/live/events), read as a browser reads them."""
    connection = HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", "/api/live/events")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    delays: list[float] = []
    try:
        while len(delays) < events:
            line = response.readline().decode()
            if line.startswith("data: "):
                message = json.loads(line[6:])
                if message["type"] == "source":
                    delays.append(time.time() - message["now"])
    finally:
        connection.close()
    return delays
