"""T1 (BENCHMARKS.md): how many S1 conversation streams one core carries through the full pipeline.

usage: taskset -c 0 python benchmarks/t1_throughput.py MODEL [--streams 64] [--paced] [--duration 60]
       [--wav conversation.wav | --data ../shared/data] [--no-mqtt] [--out benchmarks/out/t1]

Unpaced: N streams replay the conversation as fast as possible in one process, sharing one StepRunner (as the
daemon does); real-time streams per core = audio seconds processed / CPU seconds of this process.
Paced (--paced): N streams replay in real time for --duration s; a trial passes when every stream stays within
0.5 s of real time throughout (lag = wall time since its start - audio time it has fully processed) and nothing
is dropped. The largest passing N is found by growing N, then bisecting.
Events are published to a private Mosquitto on 127.0.0.1 through spkidd's MqttPublisher unless --no-mqtt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import DEFAULT_DATA, DEFAULT_OUT, build_conversation
from manifests import p2
from rich.console import Console
from rich.table import Table

from spkidd.audio.decode import load_audio
from spkidd.audio.replay import ReplaySource, to_chunkable_pcm
from spkidd.config import MqttConfig
from spkidd.modelfile import ModelBundle, load_model
from spkidd.mqtt import MqttPublisher
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.steprunner import StepRunner

MAX_LAG_S = 0.5


def daemon_peak_rss_mb(model: Path, wav: Path, sources: int, mqtt_port: int, seconds: float) -> float:
    """Peak RSS (VmHWM) of `spkidd run` with `sources` real-time looping replays of the conversation."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f'model = "{model.resolve()}"', 'instance = "t1"']
        for i in range(sources):
            lines += [
                "[[sources]]",
                f'name = "s{i:02d}"',
                'kind = "file"',
                f'path = "{wav.resolve()}"',
                "realtime = true",
                "loop = true",
            ]
        lines += ["[mqtt]", 'broker = "external"', 'host = "127.0.0.1"', f"port = {mqtt_port}"]
        config = Path(tmp) / "config.toml"
        config.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "spkidd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(seconds)
            if proc.poll() is not None:
                raise SystemExit(f"spkidd run exited early with {proc.returncode}")
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return peak_kb / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def mosquitto() -> Iterator[int]:
    """A private broker on a free port for the duration of the run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("mosquitto did not start") from None
                    time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@dataclass
class Trial:
    streams: int
    audio_s: float
    cpu_s: float
    wall_s: float
    max_lag_s: float
    dropped_chunks: int
    events: int
    jobs_per_batch: float
    published: int

    @property
    def streams_per_core(self) -> float:
        return self.audio_s / self.cpu_s

    @property
    def passed(self) -> bool:
        return self.max_lag_s <= MAX_LAG_S and self.dropped_chunks == 0


async def run_trial(
    bundle: ModelBundle,
    pcm: np.ndarray,
    streams: int,
    *,
    paced: bool,
    duration: float,
    mqtt_port: int | None,
    stagger_s: float = 0.0,
) -> Trial:
    runner = StepRunner()
    settings = PipelineSettings()
    names = [f"stream{i:04d}" for i in range(streams)]
    publisher = None
    emit: Callable[[PipelineEvent], None] = lambda event: None  # noqa: E731
    if mqtt_port is not None:
        publisher = MqttPublisher(
            MqttConfig(broker="external", port=mqtt_port, queue_size=100_000), "t1", names, bundle.labels
        )
        publisher.start()
        emit = publisher.handle
    sources = [ReplaySource.from_samples(n, pcm, realtime=paced, loop=paced) for n in names]
    pipelines = [StreamPipeline(s, bundle, settings, runner=runner) for s in sources]
    max_lag = 0.0

    async def watch() -> None:
        nonlocal max_lag
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for source, pipeline in zip(sources, pipelines, strict=True):
                if source.started_at is not None:
                    max_lag = max(max_lag, now - source.started_at - pipeline.stats.processed_s)

    async def start(pipeline: StreamPipeline, delay: float) -> None:
        await asyncio.sleep(delay)
        await pipeline.run(emit)

    rng = np.random.default_rng(0)
    delays = rng.uniform(0.0, stagger_s, streams) if stagger_s > 0 else np.zeros(streams)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(start(p, float(d))) for p, d in zip(pipelines, delays, strict=True)]
    watcher = asyncio.create_task(watch()) if paced else None
    if watcher is not None:
        await asyncio.sleep(stagger_s + duration)
        watcher.cancel()
        await asyncio.gather(*(p.stop() for p in pipelines))
    await asyncio.gather(*tasks)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    published = 0
    if publisher is not None:
        await publisher.close()
        published = int(publisher.stats_dict().get("published", 0))
    await asyncio.to_thread(runner.close)
    return Trial(
        streams=streams,
        audio_s=sum(p.stats.audio_s for p in pipelines),
        cpu_s=cpu,
        wall_s=wall,
        max_lag_s=max_lag,
        dropped_chunks=sum(p.stats.dropped_chunks for p in pipelines),
        events=sum(p.stats.events for p in pipelines),
        jobs_per_batch=runner.jobs / max(runner.batches, 1),
        published=published,
    )


def search_paced(trial: Callable[[int], Trial], start: int, console: Console) -> tuple[int, list[Trial]]:
    """Grows N by 25% until a trial fails, then bisects between the last pass and the first failure."""
    trials: list[Trial] = []

    def attempt(n: int) -> bool:
        t = trial(n)
        trials.append(t)
        console.print(
            f"paced {n:5d} streams: max lag {t.max_lag_s:.3f} s, dropped {t.dropped_chunks}, "
            f"{'pass' if t.passed else 'FAIL'}"
        )
        return t.passed

    good, bad = 0, 0
    n = start
    while True:
        if attempt(n):
            good = n
            n = max(n + 1, int(n * 1.25))
        else:
            bad = n
            break
        if good and bad:
            break
    if good == 0:
        n = start
        while n > 1:
            n = max(1, n // 2)
            if attempt(n):
                good = n
                break
            bad = n
    while good and bad - good > max(2, good // 20):
        mid = (good + bad) // 2
        if attempt(mid):
            good = mid
        else:
            bad = mid
    return good, trials


def conversation_pcm(args: argparse.Namespace) -> tuple[np.ndarray, Path]:
    wav: Path | None = args.wav
    if wav is None:
        out = args.out / "conversation"
        test_csv = p2(args.data, out / "manifests")[1]
        wav = build_conversation(test_csv, out)[0]
    return to_chunkable_pcm(load_audio(wav)), wav


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--streams", type=int, default=64, help="streams in the unpaced run")
    parser.add_argument("--paced", action="store_true", help="also search the largest real-time N")
    parser.add_argument("--paced-start", type=int, default=0, help="first N of the search (default: from unpaced)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--stagger",
        type=float,
        default=5.0,
        help="paced streams start at random times within this many seconds, so they do not all speak at the same "
        "instant (0: all start together); the lag is watched from each stream's start to the end",
    )
    parser.add_argument("--wav", type=Path, default=None, help="an existing S1 conversation.wav")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "t1")
    parser.add_argument("--no-mqtt", action="store_true")
    parser.add_argument("--daemon-sources", default="1,16", help="`spkidd run` RSS with these source counts ('' skips)")
    parser.add_argument("--daemon-seconds", type=float, default=30.0)
    return parser.parse_args()


@dataclass
class Measured:
    """Everything one T1 run measured."""

    one: Trial
    many: Trial
    rss_start: float
    rss_one: float
    rss_many: float
    paced_best: int = 0
    paced_trials: list[Trial] = field(default_factory=list)
    daemon_rss: dict[str, float] = field(default_factory=dict)


def measure(args: argparse.Namespace, bundle: ModelBundle, pcm: np.ndarray, wav: Path, port: int | None) -> Measured:
    """Unpaced trials of one stream and of many, the paced search if asked, and the daemon's own peak RSS."""
    rss_start = peak_rss_mb()
    one = asyncio.run(run_trial(bundle, pcm, 1, paced=False, duration=0, mqtt_port=port))
    rss_one = peak_rss_mb()
    many = asyncio.run(run_trial(bundle, pcm, args.streams, paced=False, duration=0, mqtt_port=port))
    measured = Measured(one, many, rss_start, rss_one, peak_rss_mb())
    if args.paced:
        start = args.paced_start or max(1, int(0.6 * many.streams_per_core))

        def trial(n: int) -> Trial:
            return asyncio.run(
                run_trial(bundle, pcm, n, paced=True, duration=args.duration, mqtt_port=port, stagger_s=args.stagger)
            )

        measured.paced_best, measured.paced_trials = search_paced(trial, start, Console())
    if port is not None:
        for count in [int(c) for c in args.daemon_sources.split(",") if c.strip()]:
            measured.daemon_rss[str(count)] = daemon_peak_rss_mb(args.model, wav, count, port, args.daemon_seconds)
    return measured


def show(args: argparse.Namespace, bundle: ModelBundle, pcm: np.ndarray, m: Measured, console: Console) -> None:
    table = Table(title=f"T1 throughput, model {bundle.name} {bundle.version}, conversation {len(pcm) / 16000:.0f} s")
    for column in ("run", "streams", "audio s", "CPU s", "streams/core", "jobs/batch", "events", "published"):
        table.add_column(column, justify="right")
    for t in (m.one, m.many):
        table.add_row(
            "unpaced",
            str(t.streams),
            f"{t.audio_s:.0f}",
            f"{t.cpu_s:.1f}",
            f"{t.streams_per_core:.0f}",
            f"{t.jobs_per_batch:.1f}",
            str(t.events),
            str(t.published),
        )
    console.print(table)
    if args.paced:
        console.print(
            f"paced: largest N within {MAX_LAG_S} s of real time for {args.duration:.0f} s "
            f"(starts staggered over {args.stagger:.0f} s): {m.paced_best}"
        )
    console.print(
        f"peak RSS of this process: {m.rss_start:.0f} MB after loading, {m.rss_one:.0f} MB after 1 stream, "
        f"{m.rss_many:.0f} MB after {args.streams} streams"
    )
    console.print("load average (1/5/15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    for count, mb in m.daemon_rss.items():
        console.print(f"peak RSS of spkidd run with {count} real-time source(s): {mb:.0f} MB")


def report(args: argparse.Namespace, wav: Path, use_mqtt: bool, m: Measured) -> dict[str, Any]:
    return {
        "benchmark": "T1",
        "model": str(args.model),
        "conversation": str(wav),
        "mqtt": use_mqtt,
        "load_average_at_end": os.getloadavg(),
        "unpaced_1": {**m.one.__dict__, "streams_per_core": m.one.streams_per_core},
        "unpaced_n": {**m.many.__dict__, "streams_per_core": m.many.streams_per_core},
        "paced_duration_s": args.duration if args.paced else None,
        "paced_stagger_s": args.stagger if args.paced else None,
        "paced_max_streams": m.paced_best if args.paced else None,
        "paced_trials": [{**t.__dict__, "passed": t.passed} for t in m.paced_trials],
        "peak_rss_mb": {"loaded": m.rss_start, "one_stream": m.rss_one, "n_streams": m.rss_many},
        "daemon_peak_rss_mb": m.daemon_rss,
    }


def main() -> None:
    args = arguments()
    torch.set_num_threads(1)
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = load_model(args.model)
    pcm, wav = conversation_pcm(args)
    use_mqtt = not args.no_mqtt and shutil.which("mosquitto") is not None
    with mosquitto() if use_mqtt else contextlib.nullcontext() as port:
        measured = measure(args, bundle, pcm, wav, port)
    show(args, bundle, pcm, measured, console)
    (args.out / "t1.json").write_text(json.dumps(report(args, wav, use_mqtt, measured), indent=2) + "\n")
    console.print(f"wrote {args.out / 't1.json'}")


if __name__ == "__main__":
    main()
