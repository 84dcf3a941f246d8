"""The household page's HTTP API as a test calls it: reading, changes sent as the page's own scripts send them, and
an address of this machine other than loopback."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import urllib.error
import urllib.request
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


def network_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (what another host on the network would connect to),
    or None on a machine with only loopback."""
    candidates: list[str] = []
    try:
        found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False)
        candidates += found.stdout.split()
    except OSError:
        pass
    try:  # the address the kernel would send from: no packet leaves for a UDP "connect"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    for text in candidates:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.version == 4 and not address.is_loopback and not address.is_unspecified:
            return text
    return None
