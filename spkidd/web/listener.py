"""One aiohttp application on one host:port, with the limits a long-running daemon needs.

aiohttp parses HTTP (header sizes refused with 4xx, idle connections closed after `idle_timeout_s`); what it does
not bound is the number of open connections, so the listener counts them and closes a connection beyond
`max_connections` as soon as it is accepted: a flood of idle clients holds no more file descriptors than the
bound (plus, for a moment, one burst of accepts).

A client gone without closing its connection (a laptop that slept, a phone that left the Wi-Fi) sends neither FIN
nor RST: the live page's keep-alive lines go unacknowledged and the kernel retries them for about 15 minutes
(tcp_retries2) before it gives the connection up, all that time a subscriber and a counted connection. TCP_USER_TIMEOUT
on the listening socket, inherited by every accepted connection, gives up on data left unacknowledged (or untaken,
behind a zero window) for `unacked_timeout_s` instead; a client that closed its tab is noticed sooner, by the
keep-alive line's failed write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenerLimits:
    max_connections: int = 128
    idle_timeout_s: float = 15.0
    max_header_bytes: int = 8190
    unacked_timeout_s: float = 30.0
    """A connection whose sent data stays unacknowledged this long is given up by the kernel (Linux only)."""


class _ClientErrorsQuiet(logging.LoggerAdapter):
    """aiohttp logs every malformed request (a 400 it has already answered) with a traceback at ERROR: a client's
    mistake, repeated at will by anyone who can connect. Those become one DEBUG line; real errors stay errors."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug("refused a malformed request: %s", exc_info.message)
            return
        self.error(msg, *args, exc_info=exc_info, **kwargs)


class _Refuse(asyncio.Protocol):
    """Answers a connection over the bound by closing it at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class HttpListener:
    """Serves `app` on host:port (port 0 picks a free one; `port` tells which after start()), over TLS when
    `tls` is given."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        limits: ListenerLimits = ListenerLimits(),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.limits = limits
        self.tls = tls
        self.refused = 0
        self._runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=limits.idle_timeout_s,
            max_line_size=limits.max_header_bytes,
            max_field_size=limits.max_header_bytes,
            shutdown_timeout=2.0,
            logger=_ClientErrorsQuiet(logging.getLogger("spkidd.web.http"), {}),
        )
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Raises OSError when host:port cannot be bound."""
        await self._runner.setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._protocol, self.host, self.port, reuse_address=True, ssl=self.tls
            )
        except OSError:
            await self._runner.cleanup()
            raise
        for sock in self._server.sockets:
            _give_up_unacked(sock, self.limits.unacked_timeout_s)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._runner.cleanup()

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) >= self.limits.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "web: %d connections open, refusing more (%d refused so far)",
                    len(server.connections),
                    self.refused,
                )
            return _Refuse()
        return server()


def _give_up_unacked(sock: socket.socket, timeout_s: float) -> None:
    """Sets TCP_USER_TIMEOUT where the platform has it: elsewhere a silent client is left to the kernel's retries."""
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(timeout_s * 1000))
