"""The page's JSON API and its live event stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web

from spkidd.audio.decode import AudioDecodeError, load_audio
from spkidd.web.auth import json_error
from spkidd.web.clips import ClipError, ClipShelf
from spkidd.web.errors import PageError
from spkidd.web.live import LiveHub
from spkidd.web.voices import VoiceError, VoiceKeeper, speaker_rows

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies and browsers from closing a quiet event stream."""
WRITE_TIMEOUT_S = 30.0
"""A browser that takes no data for this long is disconnected."""
BYTES_PER_MB = 1_000_000
"""[web] max_upload_mb counts megabytes of 10^6 bytes, as [unknown_clips] max_mb does."""
READ_CHUNK_BYTES = 256 * 1024
"""An upload is read and written in pieces this large: few trips to the writing thread, little memory."""


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise VoiceError("the request is not valid JSON") from exc
    if not isinstance(body, dict):
        raise VoiceError("the request must be a JSON object")
    return body


def upload_bytes(max_mb: float) -> int:
    """[web] max_upload_mb in bytes: the limit UploadLimit counts against and aiohttp's client_max_size."""
    return round(max_mb * BYTES_PER_MB)


class UploadLimit:
    """Counts one upload's bytes against [web] max_upload_mb as they arrive. aiohttp's client_max_size is checked
    only by request.read()/post() and a part's read(), never by read_chunk(), so without this count a recording of
    any size would be written to disk."""

    def __init__(self, max_mb: float) -> None:
        self.max_mb = max_mb
        self.max_bytes = upload_bytes(max_mb)
        self.received = 0

    async def chunks(self, part: BodyPartReader) -> AsyncIterator[bytes]:
        """The part's bytes; a 413 VoiceError as soon as the upload passes the limit."""
        while chunk := await part.read_chunk(READ_CHUNK_BYTES):
            self.received += len(chunk)
            if self.received > self.max_bytes:
                raise VoiceError(
                    f"the recording is larger than {self.max_mb:g} MB, the most this page accepts (raise [web] "
                    "max_upload_mb in the daemon's config.toml to accept more); nothing was changed",
                    status=413,
                )
            yield chunk

    async def text(self, part: BodyPartReader) -> str:
        data = b"".join([chunk async for chunk in self.chunks(part)])
        try:
            return data.decode(part.get_charset(default="utf-8"))
        except (LookupError, UnicodeDecodeError):
            raise VoiceError(f"the {part.name} field is not text") from None


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise VoiceError(f"{key} must be text")
    return value


class WebApi:
    def __init__(
        self, hub: LiveHub, voices: VoiceKeeper, clips: ClipShelf, info: dict[str, Any], max_upload_mb: float
    ) -> None:
        self.hub = hub
        self.voices = voices
        self.clips = clips
        self.info = {**info, "max_upload_mb": max_upload_mb}
        self.max_upload_mb = max_upload_mb
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
        except PageError as exc:
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
        except AudioDecodeError as exc:
            raise VoiceError(str(exc)) from exc

    async def post_record(self, request: web.Request) -> web.Response:
        """multipart: speaker, new and force ("true"/"false"), audio (a recording in any format ffmpeg reads); at
        most [web] max_upload_mb in all, else 413 with the partial recording already deleted."""
        fields: dict[str, str] = {}
        limit = UploadLimit(self.max_upload_mb)
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="spkidd-upload-"))
        try:
            upload = folder / "recording"
            got_audio = False
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise VoiceError("nested multipart uploads are not accepted")
                if part.name == "audio":
                    await self._save_part(limit, part, upload)
                    got_audio = True
                elif part.name in ("speaker", "new", "force"):
                    fields[part.name] = await limit.text(part)
                else:
                    async for _ in limit.chunks(part):
                        pass
            if not got_audio:
                raise VoiceError("no recording in the upload")
            result = await self.voices.enroll(
                fields.get("speaker", ""),
                fields.get("new", "true") == "true",
                lambda: _recording(upload),
                fields.get("force") == "true",
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
        return web.json_response({**result.to_dict(), "speakers": speaker_rows(self.voices.current())})

    @staticmethod
    async def _save_part(limit: UploadLimit, part: BodyPartReader, path: Path) -> None:
        out = await asyncio.to_thread(path.open, "wb")
        try:
            async for chunk in limit.chunks(part):
                await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(out.close)


def _recording(path: Path) -> dict[str, np.ndarray]:
    try:
        return {"recording": load_audio(path)}
    except AudioDecodeError:
        raise VoiceError(
            "the upload is not audio that can be read (record again, or upload a WAV/MP3/OGG file)"
        ) from None
