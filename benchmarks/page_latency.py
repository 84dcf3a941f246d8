"""How soon the household's page hears of an event: the delay from the moment the daemon's live hub takes an event
(the moment MQTT gets it too) to its arrival at a browser's open event stream (GET /api/live/events).

A real `spkidd run` (embedded broker, the page on) replays a conversation in real time; one client reads the
Server-Sent Events and compares each message's `now` (the hub's clock) with its own. Both run on this machine, so
the clocks are the same. The README's "within a few milliseconds" is this script's figure.

    python benchmarks/page_latency.py [--model benchmarks/out/p2.safetensors] [--audio WAV] [--events 200]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from common import DEFAULT_OUT

from spkidd.synthetic import SENTENCES, synth_audio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers: the daemon as a process, free ports, the live stream's reader

from tests.support.daemon import DaemonProcess, file_source  # noqa: E402
from tests.support.mosquitto import free_port, wait_port  # noqa: E402
from tests.support.page_http import live_delays  # noqa: E402

VOICES = ("alice", "bob", "carol", "dave")


def synthetic_conversation(path: Path) -> Path:
    """Four espeak-ng voices taking turns, when no S1 conversation has been built."""
    parts = []
    for i, voice in enumerate(VOICES):
        parts += [synth_audio(voice, SENTENCES[i]), np.zeros(16000, np.float32)]
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path


def write_config(folder: Path, model: Path, audio: Path) -> tuple[Path, int]:
    web_port = free_port()
    config = folder / "config.toml"
    config.write_text(
        f'model = "{model.resolve()}"\n{file_source(audio.resolve())}'
        f"[embedded_broker]\nport = {free_port()}\n[web]\nenabled = true\nport = {web_port}\n"
    )
    return config, web_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_OUT / "p2.safetensors")
    parser.add_argument("--audio", type=Path, default=DEFAULT_OUT / "s1" / "conversation.wav")
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"no model {args.model}: run benchmarks/run_closed_set.py p2 first, or give --model")
    with tempfile.TemporaryDirectory(prefix="spkidd-page-latency-") as tmp:
        audio = args.audio if args.audio.is_file() else synthetic_conversation(Path(tmp) / "conversation.wav")
        config, port = write_config(Path(tmp), args.model, audio)
        daemon = DaemonProcess(config, Path(tmp) / "daemon.log")
        try:
            wait_port(port, lambda: daemon.process.poll() is None, timeout=120)
            delays_ms = np.array(live_delays(port, args.events)) * 1000
        finally:
            daemon.signal(signal.SIGTERM)
            daemon.wait(60)
    figures = {
        "events": len(delays_ms),
        "audio": str(audio if audio == args.audio else "synthetic"),
        "median_ms": round(float(np.median(delays_ms)), 2),
        "p99_ms": round(float(np.percentile(delays_ms, 99)), 2),
        "max_ms": round(float(delays_ms.max()), 2),
    }
    (DEFAULT_OUT / "page_latency.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"page latency over {figures['events']} events: median {figures['median_ms']} ms, "
        f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms"
    )


if __name__ == "__main__":
    main()
