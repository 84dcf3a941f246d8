"""The household's page on aiohttp in the daemon's own event loop: the static page, its API, the live event
stream, /healthz and /metrics."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from aiohttp import web

from spkidd.config import WebConfig
from spkidd.healthserver import add_health_routes
from spkidd.web.api import WebApi, upload_bytes
from spkidd.web.auth import guard
from spkidd.web.clips import ClipShelf
from spkidd.web.control import DaemonControl
from spkidd.web.listener import HttpListener, ListenerLimits
from spkidd.web.live import LiveHub
from spkidd.web.voices import VoiceKeeper

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("spkidd.web") / "static"))


def build_app(config: WebConfig, api: WebApi, control: DaemonControl) -> web.Application:
    app = web.Application(
        middlewares=[WebApi.errors, guard(config)], client_max_size=upload_bytes(config.max_upload_mb)
    )

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index, allow_head=False)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.router.add_routes(api.routes())
    add_health_routes(app, control.health)
    return app


class WebServer:
    def __init__(
        self,
        config: WebConfig,
        control: DaemonControl,
        hub: LiveHub,
    ) -> None:
        self.config = config
        info = {
            "token_required": config.token is not None,
            "read_only": config.token is None and not config.loopback_only,
        }
        self.api = WebApi(hub, VoiceKeeper(control), ClipShelf(control), info, config.max_upload_mb)
        limits = ListenerLimits(max_connections=config.max_connections)
        app = build_app(config, self.api, control)
        self._listener = HttpListener(app, config.host, config.port, limits, tls=config.tls_context())

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def address(self) -> str:
        return self.config.listen_url(self.port)

    async def start(self) -> None:
        """Raises OSError when the address cannot be bound."""
        await self._listener.start()
        log.info("web page on %s (also /healthz and /metrics)", self.address)

    async def stop(self) -> None:
        await self._listener.stop()
