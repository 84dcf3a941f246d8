"""The page's JSON API and its live event stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web

from spkidd.audio.decode import AudioDecodeError, load_audio
from spkidd.web.auth import json_error
from spkidd.web.clips import ClipError, ClipShelf
from spkidd.web.live import LiveHub
from spkidd.web.voices import VoiceError, VoiceKeeper, speaker_rows

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies and browsers from closing a quiet event stream."""
WRITE_TIMEOUT_S = 30.0
"""A browser that takes no data for this long is disconnected."""


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise VoiceError("the request is not valid JSON") from exc
    if not isinstance(body, dict):
        raise VoiceError("the request must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise VoiceError(f"{key} must be text")
    return value


class WebApi:
    def __init__(self, hub: LiveHub, voices: VoiceKeeper, clips: ClipShelf, info: dict[str, Any]) -> None:
        self.hub = hub
        self.voices = voices
        self.clips = clips
        self.info = info
        self._listing = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/info", self.get_info),
            web.get("/api/live", self.get_live),
            web.get("/api/live/events", self.live_events),
            web.get("/api/voices", self.get_voices),
            web.post("/api/voices/forget", self.post_forget),
            web.post("/api/voices/rename", self.post_rename),
            web.get("/api/clips", self.get_clips),
            web.get("/api/clips/{name}", self.get_clip_audio),
            web.post("/api/enroll", self.post_enroll),
            web.post("/api/record", self.post_record),
        ]

    @staticmethod
    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """Refusals become a JSON {"error": message} the page shows as it is."""
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except (VoiceError, ClipError) as exc:
            return json_error(exc.status, str(exc))

    # ----- reading ----------------------------------------------------------------------------------------------

    async def get_info(self, request: web.Request) -> web.Response:
        bundle = self.voices.current()
        model = {"name": bundle.name, "version": bundle.version}
        return web.json_response({**self.info, "clips_enabled": self.clips.enabled, "model": model})

    async def get_live(self, request: web.Request) -> web.Response:
        return web.json_response(self.hub.snapshot())

    async def live_events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        subscriber = self.hub.subscribe()
        try:
            await self._send(response, json.dumps({"type": "snapshot", **self.hub.snapshot()}))
            while True:
                try:
                    message = await asyncio.wait_for(subscriber.get(), KEEPALIVE_S)
                except TimeoutError:
                    await asyncio.wait_for(response.write(b": keep-alive\n\n"), WRITE_TIMEOUT_S)
                    continue
                await self._send(response, message)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.hub.unsubscribe(subscriber)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, message: str) -> None:
        await asyncio.wait_for(response.write(f"data: {message}\n\n".encode()), WRITE_TIMEOUT_S)

    async def get_voices(self, request: web.Request) -> web.Response:
        return web.json_response({"speakers": speaker_rows(self.voices.current())})

    async def get_clips(self, request: web.Request) -> web.Response:
        if not self.clips.enabled:
            return web.json_response({"enabled": False, "groups": []})
        bundle = self.voices.current()
        async with self._listing:
            groups = await asyncio.to_thread(self.clips.listing, bundle)
        return web.json_response({"enabled": True, "groups": groups})

    async def get_clip_audio(self, request: web.Request) -> web.FileResponse:
        path = await asyncio.to_thread(self.clips.path, request.match_info["name"])
        return web.FileResponse(path, headers={"Content-Type": "audio/wav", "Cache-Control": "no-store"})

    # ----- changing ---------------------------------------------------------------------------------------------

    async def post_forget(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        await self.voices.forget(_text(body, "speaker"))
        return web.json_response({"speakers": speaker_rows(self.voices.current())})

    async def post_rename(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        name = await self.voices.rename(_text(body, "speaker"), _text(body, "new_name"))
        return web.json_response({"speaker": name, "speakers": speaker_rows(self.voices.current())})

    async def post_enroll(self, request: web.Request) -> web.Response:
        """{"speaker": name, "new": true|false, "clips": [kept clip names], "force": true|false}"""
        body = await _json_body(request)
        names = body.get("clips")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise VoiceError("clips must be a list of clip names")
        if not names:
            raise ClipError("select at least one clip")
        await asyncio.to_thread(self._check_clip_names, names)
        result = await self.voices.enroll(
            _text(body, "speaker"),
            bool(body.get("new", True)),
            lambda: self._clip_audio(names),
            body.get("force") is True,
        )
        await asyncio.to_thread(self.clips.remove, names)
        return web.json_response({**result.to_dict(), "speakers": speaker_rows(self.voices.current())})

    def _check_clip_names(self, names: list[str]) -> None:
        """Blocking (a look in the clips folder per name): refuses a bad name before any work starts."""
        for name in names:
            self.clips.path(name)

    def _clip_audio(self, names: list[str]) -> dict[str, np.ndarray]:
        try:
            return self.clips.audio(names)
        except ClipError as exc:
            raise VoiceError(str(exc), exc.status) from exc
        except AudioDecodeError as exc:
            raise VoiceError(str(exc)) from exc

    async def post_record(self, request: web.Request) -> web.Response:
        """multipart: speaker, new and force ("true"/"false"), audio (a recording in any format ffmpeg reads)."""
        fields: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="spkidd-upload-") as folder:
            upload = Path(folder) / "recording"
            got_audio = False
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise VoiceError("nested multipart uploads are not accepted")
                if part.name == "audio":
                    await self._save_part(part, upload)
                    got_audio = True
                elif part.name in ("speaker", "new", "force"):
                    fields[part.name] = await part.text()
            if not got_audio:
                raise VoiceError("no recording in the upload")
            result = await self.voices.enroll(
                fields.get("speaker", ""),
                fields.get("new", "true") == "true",
                lambda: _recording(upload),
                fields.get("force") == "true",
            )
        return web.json_response({**result.to_dict(), "speakers": speaker_rows(self.voices.current())})

    @staticmethod
    async def _save_part(part: BodyPartReader, path: Path) -> None:
        with path.open("wb") as out:
            while chunk := await part.read_chunk():
                await asyncio.to_thread(out.write, chunk)


def _recording(path: Path) -> dict[str, np.ndarray]:
    try:
        return {"recording": load_audio(path)}
    except AudioDecodeError:
        raise VoiceError(
            "the upload is not audio that can be read (record again, or upload a WAV/MP3/OGG file)"
        ) from None
