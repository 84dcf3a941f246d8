"""Browsers that went away stop counting (spkidd.web.listener, spkidd.web.live): a closed tab stops being a live-page
subscriber and an open connection within the live stream's keep-alive interval, with no event published, so gone
clients cannot lock the page out; a client that takes no data is given up by the kernel, as one that vanished
without closing its connection is."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import cast

from aiohttp import web

from spkidd.config import WebConfig
from spkidd.web.api import KEEPALIVE_S
from spkidd.web.control import DaemonControl
from spkidd.web.listener import HttpListener, ListenerLimits
from spkidd.web.live import LiveHub
from spkidd.web.server import WebServer

PAGES = 8
"""Live pages open at once, as many as [web] max_connections allows."""
SLACK_S = 30.0
"""Added to every bound: a loaded 2-core machine may be slow, never this slow."""
EVENTS = b"GET /api/live/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `check()` held; fails after `timeout_s`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s:.0f} s: {what}"
        await asyncio.sleep(0.2)
    return time.monotonic() - start


async def _open_page(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A live page's event stream, once its first event (the snapshot) arrived; None when the server closed it
    unanswered (refused over max_connections)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(EVENTS)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLACK_S)
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), SLACK_S)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        writer.close()
        return None
    assert head.startswith(b"HTTP/1.1 200 ") and b'"type": "snapshot"' in first
    return reader, writer


def _close_abruptly(writer: asyncio.StreamWriter, reset: bool) -> None:
    """As a closed tab (FIN) or a killed browser (RST): the server is told nothing else."""
    if reset:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_closed_pages_stop_counting_without_any_event_and_free_their_connections() -> None:
    hub = LiveHub(["kitchen"])
    config = WebConfig(enabled=True, host="127.0.0.1", port=0, max_connections=PAGES)
    daemon = cast(DaemonControl, SimpleNamespace(health=None))  # the live stream asks the daemon nothing
    server = WebServer(config, daemon, hub)
    await server.start()
    pages: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
    try:
        pages = [await _open_page(server.port) for _ in range(PAGES)]
        assert all(pages) and hub.subscribers == PAGES
        assert await _open_page(server.port) is None, "a page over max_connections is refused"
        for n, page in enumerate(pages):
            assert page is not None
            _close_abruptly(page[1], reset=n % 2 == 0)
        took = await _wait_until(lambda: hub.subscribers == 0, KEEPALIVE_S + SLACK_S, "closed pages unsubscribed")
        print(f"{PAGES} closed pages unsubscribed after {took:.1f} s (keep-alive every {KEEPALIVE_S:.0f} s)")
        pages = [await _open_page(server.port) for _ in range(PAGES)]
        assert all(pages), "every connection of the closed pages was freed: as many new pages are served"
        assert hub.subscribers == PAGES
    finally:
        for page in pages:
            if page is not None:
                page[1].close()
        await server.stop()


async def _endless(request: web.Request, given_up: asyncio.Future[float]) -> web.StreamResponse:
    """Streams until the connection fails, and says when it did."""
    response = web.StreamResponse()
    await response.prepare(request)
    try:
        while True:
            await response.write(b"x" * 65536)
    except ConnectionError:
        given_up.set_result(time.monotonic())
    return response


async def _stuck_client(port: int) -> socket.socket:
    """A client that asks for the stream and never reads it: its window closes, the server's data waits unsent,
    as data waits unacknowledged for a client that vanished (which loopback cannot show)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, b"GET /stuck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


async def _reads_on(port: int, seconds: float) -> int:
    """Bytes a reading client got from the stream over `seconds`, the last of them at the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /reading HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    got = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            got += len(await asyncio.wait_for(reader.read(65536), SLACK_S))
            await asyncio.sleep(0.05)
        return got
    finally:
        writer.close()


async def test_a_client_that_takes_no_data_is_given_up_and_a_reading_one_is_not() -> None:
    timeout_s = 2.0
    loop = asyncio.get_running_loop()
    stuck: asyncio.Future[float] = loop.create_future()
    reading: asyncio.Future[float] = loop.create_future()
    app = web.Application()
    app.router.add_get("/stuck", partial(_endless, given_up=stuck))
    app.router.add_get("/reading", partial(_endless, given_up=reading))
    listener = HttpListener(app, "127.0.0.1", 0, ListenerLimits(unacked_timeout_s=timeout_s))
    await listener.start()
    try:
        client = await _stuck_client(listener.port)
        asked = time.monotonic()
        got = await _reads_on(listener.port, 3 * timeout_s)
        assert got > 0 and not reading.done(), "a client that reads is served past the timeout"
        given_up = await asyncio.wait_for(stuck, 5 * timeout_s + SLACK_S)
        print(f"a client taking no data given up {given_up - asked:.1f} s after it asked (timeout {timeout_s} s)")
        client.close()
    finally:
        await listener.stop()
