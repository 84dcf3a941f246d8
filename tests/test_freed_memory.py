"""Memory a replaced model freed goes back to the system a while after the change, however often models change."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import time
from pathlib import Path

from spkidd.config import load_config
from spkidd.daemon import Daemon
from spkidd.freed_memory import TrimAfterModelChanges, trim_freed_memory
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import conversation, file_source, random_model, write_config
from tests.support.mosquitto import running_mosquitto
from tests.support.polling import until


def test_glibc_gives_back_what_was_freed() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(2000) for _ in range(20000)]
    for block in blocks:
        libc.free(block)
    assert trim_freed_memory() is True


class Trims:
    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> bool:
        self.at.append(time.monotonic())
        return True


async def test_one_trim_follows_a_change_after_the_delay() -> None:
    trims = Trims()
    trimmer = TrimAfterModelChanges(0.2, trims)
    changed = time.monotonic()
    trimmer.model_changed()
    await until(lambda: trimmer.trims == 1, "the trim")
    await asyncio.sleep(0.3)
    assert trimmer.trims == 1 and trims.at[0] - changed >= 0.2


async def test_a_burst_of_changes_shares_a_trim_and_the_last_change_gets_one_too() -> None:
    trims = Trims()
    trimmer = TrimAfterModelChanges(0.5, trims)
    for _ in range(8):
        trimmer.model_changed()
        await asyncio.sleep(0.05)
    last_change = time.monotonic()
    await until(lambda: trimmer.trims == 2, "the second trim")
    await asyncio.sleep(0.6)
    assert trimmer.trims == 2 and trims.at[0] < last_change + 0.2 and trims.at[1] - last_change >= 0.5


async def test_closing_drops_a_trim_that_is_due() -> None:
    trims = Trims()
    trimmer = TrimAfterModelChanges(0.2, trims)
    trimmer.model_changed()
    await trimmer.close()
    await asyncio.sleep(0.3)
    assert trims.at == [] and trimmer.trims == 0


async def test_the_daemon_trims_after_a_reload_and_not_before(tmp_path: Path) -> None:
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0])], lead_s=0.3)
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nport = {broker.port}\n'
        path = write_config(tmp_path / "config.toml", model, file_source(wav), mqtt, "[vad]\nmax_utterance_s = 1.0\n")
        daemon = Daemon(load_config(path))
        run = asyncio.create_task(daemon.run())
        try:
            await until(lambda: bool(daemon.streams), "the stream")
            await asyncio.sleep(2.5)
            assert daemon.freed_memory.trims == 0
            assert await daemon.reload()
            await until(lambda: daemon.freed_memory.trims == 1, "the trim after the reload", timeout_s=10)
        finally:
            daemon.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run, 60)
