"""Soak: `spkidd run` for a long while on a looping file replayed unpaced (hours of audio in minutes), with the web
page's live event stream and an MQTT subscriber connected, sampling what a months-long run would leak.

usage: nice -n 10 python benchmarks/soak.py [--model MODEL] [--wav WAV] [--minutes 30] [--every 5]
       [--hup-every S [--hup-for MIN]] [--broker-restart-every S] [--out benchmarks/out/soak]

Without --model/--wav a random model and an espeak-ng conversation are made, so it runs on a fresh machine.
Every --every seconds it samples the daemon's RSS, open file descriptors, threads and child processes, the kept
unknown clips (count, bytes; [unknown_clips] is set to 10 clips / 2 MB), the log's size and the audio processed
(/healthz), and prints each sample; at the end the trend of each over the second half of the run (per wall hour
and per hour of audio), so a steady rise (a leak) shows apart from the start-up's growth. --hup-every sends SIGHUP
in a loop (for the first --hup-for minutes: the rest shows what the reloads left behind); --broker-restart-every
restarts the external Mosquitto (every other time with kill -9).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers: config files, models, Mosquitto and the daemon as a process

from tests.support.daemon import DaemonProcess, conversation, file_source, random_model, write_config  # noqa: E402
from tests.support.mosquitto import Mosquitto, free_port  # noqa: E402
from tests.support.procs import descendants  # noqa: E402

VOICES = ["alice", "bob", "carol", "dave", "erin"]
LINES = [
    "Please turn on the kitchen lights and start the coffee machine.",
    "Is anyone going to the shop later this afternoon?",
    "The weather will be cold and windy tomorrow morning.",
]
CLIPS = "[unknown_clips]\nfolder = '{folder}'\nmax_clips = 10\nmax_mb = 2.0\nmin_speech_s = 0.5\n"


@dataclass
class Sample:
    wall_s: float
    audio_h: float
    rss_mb: float
    fds: int
    threads: int
    children: int
    clips: int
    clips_kb: float
    log_kb: float
    mqtt_messages: int
    sse_messages: int
    reloads: int
    broker_restarts: int


@dataclass
class Counters:
    mqtt: int = 0
    sse: int = 0
    reloads: int = 0
    broker_restarts: int = 0


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _audio_hours(web_port: int) -> float:
    """From /healthz, which answers 503 (with the same body) while the broker or the source is away."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=5) as response:
            health = json.load(response)
    except urllib.error.HTTPError as exc:
        health = json.load(exc)
    except OSError:
        return float("nan")
    return sum(s["audio_s"] for s in health["streams"].values()) / 3600


def _size(path: Path) -> int:
    """0 for a file the daemon removed since the folder was listed."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sample(daemon: DaemonProcess, started: float, web_port: int, clips: Path, counts: Counters) -> Sample:
    pid = daemon.process.pid
    status = _status(pid)
    kept = [p for p in clips.glob("*")] if clips.is_dir() else []
    return Sample(
        wall_s=round(time.monotonic() - started, 1),
        audio_h=round(_audio_hours(web_port), 3),
        rss_mb=round(int(status["VmRSS"].split()[0]) / 1024, 1),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
        children=len(descendants(pid)),
        clips=sum(1 for p in kept if p.suffix == ".wav"),
        clips_kb=round(sum(_size(p) for p in kept) / 1024, 1),
        log_kb=round(daemon.log.stat().st_size / 1024, 1),
        mqtt_messages=counts.mqtt,
        sse_messages=counts.sse,
        reloads=counts.reloads,
        broker_restarts=counts.broker_restarts,
    )


def slope(samples: list[Sample], key: str, per: str) -> float:
    """The least-squares rise of `key` per hour of `per` ("wall_s" or "audio_h") over the second half of the
    samples, so that the start-up's growth is left out."""
    half = samples[len(samples) // 2 :]
    x = np.array([s.wall_s / 3600 if per == "wall_s" else s.audio_h for s in half])
    y = np.array([float(getattr(s, key)) for s in half])
    return float(np.polyfit(x, y, 1)[0]) if len(half) >= 3 and np.ptp(x) > 0 else float("nan")


async def follow_mqtt(port: int, counts: Counters) -> None:
    while True:
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, keepalive=5) as client:
                await client.subscribe("spkidd/#", qos=1)
                await client.subscribe("homeassistant/#", qos=1)
                async for _ in client.messages:
                    counts.mqtt += 1
        await asyncio.sleep(0.5)


async def follow_live_page(web_port: int, counts: Counters) -> None:
    """A browser's EventSource: reconnects as a browser would when the stream ends."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{web_port}/api/live/events") as response:
                    await _count_messages(response.content, counts)
            await asyncio.sleep(1.0)


async def _count_messages(stream: aiohttp.StreamReader, counts: Counters) -> None:
    """Messages end with a blank line; a snapshot can be longer than aiohttp's line limit, so no readline."""
    pending = b""
    async for data in stream.iter_any():
        pending += data
        *messages, pending = pending.split(b"\n\n")
        counts.sse += sum(1 for m in messages if m.startswith(b"data: "))


async def hup_loop(daemon: DaemonProcess, every_s: float, for_s: float, counts: Counters) -> None:
    started = time.monotonic()
    while time.monotonic() - started < for_s:
        await asyncio.sleep(every_s)
        daemon.signal(signal.SIGHUP)
        counts.reloads += 1


async def broker_restarts(broker: Mosquitto, every_s: float, counts: Counters) -> None:
    while True:
        await asyncio.sleep(every_s)
        broker.stop(signal.SIGKILL if counts.broker_restarts % 2 else signal.SIGTERM)
        await asyncio.sleep(min(5.0, every_s / 4))
        await asyncio.to_thread(broker.start)
        counts.broker_restarts += 1


@contextlib.contextmanager
def running(daemon: DaemonProcess, broker: Mosquitto) -> Iterator[None]:
    try:
        yield
    finally:
        daemon.signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except Exception:
            daemon.kill()
        broker.stop()


def make_inputs(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    model = args.model or random_model(work / "model.safetensors", VOICES[:3])
    if args.wav is not None:
        return model, args.wav
    turns = [(voice, LINES[i % len(LINES)]) for i, voice in enumerate(VOICES * 2)]
    return model, conversation(work, turns)


async def soak(args: argparse.Namespace, work: Path) -> list[Sample]:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # the daemon and broker go too
    model, wav = make_inputs(args, work)
    broker = Mosquitto(work, persistence=False)
    broker.start()
    web_port, clips = free_port(), work / "clips"
    extra = f"[web]\nenabled = true\nport = {web_port}\n" + CLIPS.format(folder=clips) + args.extra.replace("\\n", "\n")
    config = write_config(
        work / "config.toml",
        model.resolve(),
        file_source(wav.resolve(), realtime=args.paced, loop=True),
        f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\nstats_interval_s = 5.0',
        extra,
    )
    daemon = DaemonProcess(config, work / "daemon.log")
    counts, samples = Counters(), []
    with running(daemon, broker):
        daemon.wait_log(lambda text: "ready" in text)
        tasks = [
            asyncio.create_task(follow_mqtt(broker.port, counts)),
            asyncio.create_task(follow_live_page(web_port, counts)),
        ]
        if args.hup_every:
            hup_for_s = (args.hup_for if args.hup_for is not None else args.minutes) * 60
            tasks.append(asyncio.create_task(hup_loop(daemon, args.hup_every, hup_for_s, counts)))
        if args.broker_restart_every:
            tasks.append(asyncio.create_task(broker_restarts(broker, args.broker_restart_every, counts)))
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.minutes * 60:
                if daemon.process.poll() is not None:
                    raise SystemExit(f"the daemon exited with {daemon.process.returncode}; log: {daemon.log}")
                samples.append(await asyncio.to_thread(sample, daemon, started, web_port, clips, counts))
                print(json.dumps(asdict(samples[-1])), flush=True)
                await asyncio.sleep(args.every)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def report(samples: list[Sample], log: Path) -> dict[str, Any]:
    keys = ["rss_mb", "fds", "threads", "children", "clips", "clips_kb", "log_kb"]
    out: dict[str, Any] = {"wall_s": samples[-1].wall_s, "audio_h": samples[-1].audio_h}
    for key in keys:
        out[key] = {
            "start": getattr(samples[0], key),
            "end": getattr(samples[-1], key),
            "second_half_per_wall_hour": round(slope(samples, key, "wall_s"), 2),
            "second_half_per_audio_hour": round(slope(samples, key, "audio_h"), 3),
        }
    text = log.read_text(errors="replace")
    out["log"] = {"tracebacks": text.count("Traceback"), "warnings": text.count("WARNING"), "lines": text.count("\n")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--wav", type=Path)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--paced", action="store_true", help="replay at speaking pace (for reload and outage runs)")
    parser.add_argument("--hup-every", type=float, default=0.0)
    parser.add_argument("--hup-for", type=float, help="minutes of SIGHUPs (default: the whole run)")
    parser.add_argument("--broker-restart-every", type=float, default=0.0)
    parser.add_argument("--extra", default="", help="more config text (\\n for new lines)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "soak")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spkidd-soak-") as tmp:
        samples = asyncio.run(soak(args, Path(tmp)))
        summary = report(samples, Path(tmp) / "daemon.log")
        (args.out / "daemon.log").write_bytes((Path(tmp) / "daemon.log").read_bytes())
    (args.out / "samples.jsonl").write_text("".join(json.dumps(asdict(s)) + "\n" for s in samples))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
