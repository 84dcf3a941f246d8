"""The demo behind scripts/demo.sh: synthetic household -> `spkidd train` -> `spkidd run` -> MQTT messages.

Needs espeak-ng and sox (scripts/setup.sh installs them). Everything is written to --work (default: a fresh
temporary folder, printed at the start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from spkidd.synthetic import SENTENCES, synth_corpus, synth_speech

HOUSEHOLD = ["alice", "bob", "carol", "hank"]
"""espeak-ng variants the pretrained encoder tells apart: with dave (en-gb-scotland+m1) in hank's place, three of
four trained models gave bob's first turn to dave in the end; with hank, as with frank, the demo named all six turns
right and none wrong first."""
CONVERSATION = [
    ("alice", "Good morning everyone, did you sleep well?"),
    ("bob", "Not really, the neighbours were loud until midnight."),
    ("carol", "I heard them too. Shall we have breakfast on the terrace?"),
    ("hank", "Only if someone makes the coffee this time."),
    ("alice", "Fine, I will make it, but you are doing the dishes."),
    ("bob", "Deal. Then let us leave for the lake at ten."),
]


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free (so the page's address can be opened before the demo starts), else any."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(work: Path) -> tuple[Path, Path, list[tuple[float, float, str]]]:
    print(f"== 1. synthetic household: {', '.join(HOUSEHOLD)} (espeak-ng)")
    synth_corpus(work / "voices", HOUSEHOLD, SENTENCES[:10])
    parts, truth, t = [np.zeros(8000, np.float32)], [], 0.5
    for i, (voice, text) in enumerate(CONVERSATION):
        audio, _ = sf.read(synth_speech(voice, text, work / f"turn{i}.wav"), dtype="float32")
        truth.append((round(t, 2), round(t + len(audio) / 16000, 2), voice))
        parts += [audio, np.zeros(16000, np.float32)]
        t += len(audio) / 16000 + 1.0
    conversation = work / "conversation.wav"
    sf.write(conversation, np.concatenate(parts), 16000)
    model = work / "household.safetensors"
    print("== 2. spkidd train voices/ --out household.safetensors")
    command = [sys.executable, "-m", "spkidd", "train", str(work / "voices"), "--out", str(model)]
    subprocess.run(command, check=True)
    return model, conversation, truth


async def watch(port: int, stop: asyncio.Event, events: list[dict]) -> None:
    import aiomqtt

    for _ in range(100):
        try:
            async with aiomqtt.Client("127.0.0.1", port) as client:
                await client.subscribe("spkidd/#")
                await client.subscribe("homeassistant/#")
                async for message in client.messages:
                    payload = message.payload.decode() if isinstance(message.payload, bytes) else str(message.payload)
                    shown = payload if len(payload) < 160 else payload[:157] + "..."
                    print(f"  {message.topic} {shown}", flush=True)
                    if str(message.topic).endswith("/event"):
                        events.append(json.loads(payload))
                    if stop.is_set():
                        return
        except aiomqtt.MqttError:
            if stop.is_set():
                return
            await asyncio.sleep(0.2)


async def run_daemon(work: Path, model: Path, conversation: Path, seconds: float, hold: bool) -> list[dict]:
    port, web_port = free_port(), free_port(8730)
    config = work / "config.toml"
    config.write_text(
        f'model = "{model}"\ninstance = "demo"\n\n[[sources]]\nname = "kitchen"\nkind = "file"\n'
        f'path = "{conversation}"\nrealtime = true\n\n'
        f'[mqtt]\nbroker = "embedded"\n\n[embedded_broker]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f"[web]\nenabled = true\nport = {web_port}\n"
    )
    print(f"== 3. spkidd run --config {config}  (embedded broker on 127.0.0.1:{port})")
    print(f"== the household page, live: http://127.0.0.1:{web_port}/   MQTT messages:", flush=True)
    with open(work / "daemon.log", "wb") as log:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "spkidd", "run", "--config", str(config), stderr=log
        )
        stop, events = asyncio.Event(), []  # type: asyncio.Event, list[dict]
        watcher = asyncio.create_task(watch(port, stop, events))
        try:
            await asyncio.sleep(seconds + 6.0)
            if hold:
                print(f"== holding: the page stays at http://127.0.0.1:{web_port}/ until Ctrl-C", flush=True)
                await asyncio.Event().wait()
        finally:
            daemon.send_signal(signal.SIGTERM)
            await daemon.wait()
            stop.set()
            await asyncio.sleep(0.5)
            watcher.cancel()
    print(f"== daemon stopped (exit {daemon.returncode}); its log: {work / 'daemon.log'}")
    return events


def summarize(truth: list[tuple[float, float, str]], events: list[dict]) -> None:
    """The final word of each turn, and the turns where a first or changed name was wrong before it was right:
    the `identified` event is what a fast automation triggers on, so a wrong one counts even when the final is
    right."""
    finals = [(float(e["start"]), e["speaker"]) for e in events if e.get("final")]
    print(f"== who spoke: {', '.join(speaker for _, _, speaker in truth)}")
    print(f"== final identifications published: {', '.join(speaker for _, speaker in finals) or 'none'}")
    right = wrong_first = 0
    for start, end, speaker in truth:
        in_turn = [named for at, named in finals if start - 0.3 <= at <= end]
        right += bool(in_turn) and in_turn[-1] == speaker
        named = [e["speaker"] for e in events if start - 0.3 <= float(e["start"]) <= end and e["speaker"] != "unknown"]
        wrong_first += bool(named) and named[0] != speaker
    print(f"== {right} of {len(truth)} turns named correctly (the last final word within each turn)")
    print(f"== {wrong_first} of {len(truth)} turns named someone else first (an `identified` or `changed` event)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--hold", action="store_true", help="keep the daemon and its page running until Ctrl-C")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="spkidd-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"working in {work}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    model, conversation, truth = build(work)
    duration = sf.info(str(conversation)).duration
    try:
        events = asyncio.run(run_daemon(work, model, conversation, duration, args.hold))
    except KeyboardInterrupt:
        return
    summarize(truth, events)


if __name__ == "__main__":
    main()
