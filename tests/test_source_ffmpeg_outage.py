"""A camera that stays unreachable for hours (switched off for the night, unplugged): every reconnection attempt is
one warning that says why (ffmpeg's last line in it), not three; ffmpeg's own lines are logged in full for the
first failed attempt of an outage and at DEBUG after it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from spkidd.audio.ffmpeg import FfmpegSource
from tests.support.ffmpeg_procs import ffmpeg_children
from tests.support.mosquitto import free_port
from tests.support.source_recorder import FAST_BACKOFF

ATTEMPTS = 6


async def test_a_long_outage_logs_one_warning_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="spkidd.audio.ffmpeg")
    source = FfmpegSource("hall", f"rtsp://127.0.0.1:{free_port()}/stream", backoff=FAST_BACKOFF)
    async with asyncio.timeout(60), contextlib.aclosing(source.chunks()) as chunks:
        waiting = asyncio.ensure_future(anext(aiter(chunks)))
        while source.reconnects < ATTEMPTS:
            await asyncio.sleep(0.05)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    retries = [m for m in warnings if "reconnecting in" in m]
    ffmpeg_lines = [m for m in warnings if m.startswith("ffmpeg: ")]
    assert len(retries) >= ATTEMPTS and all("Connection refused" in m for m in retries), retries
    assert ffmpeg_lines and all("Connection refused" in m for m in ffmpeg_lines)
    first_retry = warnings.index(retries[0])
    assert warnings[:first_retry] == ffmpeg_lines, "only the first failed attempt's lines, before its retry"
    debug = [
        r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "Connection refused" in r.getMessage()
    ]
    assert len(debug) >= ATTEMPTS - 1, "the later attempts' lines are still there for -v"
    assert len(warnings) == len(retries) + len(ffmpeg_lines)
    assert ffmpeg_children() == {}
