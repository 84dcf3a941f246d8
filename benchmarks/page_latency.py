"""How soon the household's page hears of an event: the delay from the moment the daemon's live hub takes an event
(the moment MQTT gets it too) to its arrival at a browser's open event stream (GET /api/live/events).

A real `spkidd run` (embedded broker, the page on) replays a conversation in real time; one client reads the
Server-Sent Events and compares each message's `now` (the hub's clock) with its own. Both run on this machine, so
the clocks are the same. The README's "within a few milliseconds" is this script's figure.

    python benchmarks/page_latency.py [--model benchmarks/out/p2.safetensors] [--audio WAV] [--events 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from common import DEFAULT_OUT

from spkidd.synthetic import SENTENCES, synth_audio

VOICES = ("alice", "bob", "carol", "dave")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        f'model = "{model.resolve()}"\n'
        f'[[sources]]\nname = "kitchen"\nkind = "file"\npath = "{audio.resolve()}"\nrealtime = true\nloop = true\n'
        f"[embedded_broker]\nport = {free_port()}\n"
        f"[web]\nenabled = true\nport = {web_port}\n"
    )
    return config, web_port


def wait_for_page(port: int, daemon: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if daemon.poll() is not None:
                raise SystemExit(f"spkidd run exited with {daemon.returncode} before the page was up") from None
            if time.monotonic() > deadline:
                raise SystemExit("the page did not come up in time") from None
            time.sleep(0.2)


def read_delays(port: int, events: int) -> list[float]:
    """Delays (s) of the first `events` event messages of the live stream, read as a browser reads them."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", "/api/live/events")
    response = connection.getresponse()
    delays: list[float] = []
    try:
        while len(delays) < events:
            line = response.readline().decode()
            if line.startswith("data: "):
                message = json.loads(line[6:])
                if message["type"] == "source":
                    delays.append(time.time() - message["now"])
    finally:
        connection.close()
    return delays


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
        daemon = subprocess.Popen(
            [sys.executable, "-m", "spkidd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_page(port, daemon)
            delays_ms = np.array(read_delays(port, args.events)) * 1000
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
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
