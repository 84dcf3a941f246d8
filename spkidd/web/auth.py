"""Who may change the voices, and who may hear the kept recordings: a middleware in front of every request.

- Every change must carry the `X-Spkidd-Request` header. A browser sends it only from the page's own scripts
  (another site's form or script cannot add it without a CORS preflight, which is never granted), so a page
  elsewhere cannot make the user's browser enroll or forget a voice.
- With a token configured, a change must also carry `Authorization: Bearer <token>`.
- Without a token, only a page that listens on loopback accepts changes, and only when the browser reached it by a
  loopback name or address: a site whose name an attacker points at 127.0.0.1 (DNS rebinding) is same-origin with
  itself, so its scripts could add the header, but its requests carry its own name as Host.
- The kept `unknown` clips (`/api/clips...`) are recordings of guests and family: beyond loopback they are served
  only with the token, like a change, and not at all without one. The live view and the voices stay readable.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from spkidd.config import WebConfig, is_loopback

REQUEST_HEADER = "X-Spkidd-Request"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


PRIVATE_PREFIX = "/api/clips"


def refusal(config: WebConfig, request: web.Request) -> web.Response | None:
    """None when the change may go ahead, else the response that refuses it."""
    if request.headers.get(REQUEST_HEADER) != "1":
        return json_error(403, f"refused: changes must come from the spkidd page itself (no {REQUEST_HEADER} header)")
    without = f"read-only: the page listens on {config.host} without a password; set [web] token in the daemon's "
    return _access_refusal(config, request, without + "config.toml to change voices from the network")


def private_refusal(config: WebConfig, request: web.Request) -> web.Response | None:
    """None when the kept recordings may be read, else the response that refuses it."""
    without = f"the kept recordings are private: the page listens on {config.host} without a password; set [web] "
    return _access_refusal(
        config, request, without + "token in the daemon's config.toml to hear and enroll them from the network"
    )


def _access_refusal(config: WebConfig, request: web.Request, without_password: str) -> web.Response | None:
    """The password when one is set; without one, loopback only (else 403 with `without_password`)."""
    if config.token is not None:
        return _password_refusal(config.token, request)
    if not config.loopback_only:
        return json_error(403, without_password)
    host = _host_name(request.host)
    if not is_loopback(host):
        return json_error(
            403,
            f"refused: the page was opened as {host!r}; without a password ([web] token) only a page opened at "
            "127.0.0.1 or localhost may do this",
        )
    return None


def _host_name(host: str) -> str:
    """The Host header without its port ("[::1]:8730" -> "::1")."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _password_refusal(token: str, request: web.Request) -> web.Response | None:
    given = request.headers.get("Authorization", "")
    scheme, _, offered = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), token.encode()):
        what = "wrong password" if given else "a password is needed"
        return json_error(401, f"{what}: enter the page's password ([web] token in the daemon's config.toml)")
    return None


def guard(config: WebConfig) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = None
        if request.method not in ("GET", "HEAD"):
            refused = refusal(config, request)
        elif request.path.startswith(PRIVATE_PREFIX):
            refused = private_refusal(config, request)
        if refused is not None:
            return refused
        return await handler(request)

    return middleware
