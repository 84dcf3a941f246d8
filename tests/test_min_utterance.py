"""`[vad] min_utterance_s` (config.toml: "shorter utterances get no final identification"): through `spkidd run`
and MQTT, a short word is heard (`speaking` ON, then OFF) but gets no final event, while the sentence after it
does; the same recording with the default bound gives both their finals, so it is the setting that silenced it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from spkidd.audio.base import CHUNK_SAMPLES
from spkidd.audio.replay import ReplaySource, to_chunkable_pcm
from spkidd.events import Identification, SpeechActivity
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.synthetic import synth_audio
from spkidd.vad import GateSettings, SpeechGate, UtteranceEnd
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import DaemonProcess, file_source, random_model, write_config
from tests.support.mosquitto import Collector, Received, running_mosquitto
from tests.support.streaming import random_bundle, silence, trim, write_wav

P = "spkidd/testhouse"
EVERYTHING = {"min_score": -1.0, "min_confidence": 0.0, "min_margin": 0.0}
"""An untrained model: every utterance long enough gets a named final."""


def utterance_lengths(audio: np.ndarray, settings: GateSettings) -> list[float]:
    """The speech the gate counts for each utterance (UtteranceEnd.speech_s), computed apart from the pipeline."""
    gate = SpeechGate(settings)
    pcm = to_chunkable_pcm(audio)
    ends = []
    for i in range(len(pcm) // CHUNK_SAMPLES):
        chunk = pcm[i * CHUNK_SAMPLES : (i + 1) * CHUNK_SAMPLES]
        ends += [e for e in gate.push(chunk, i * CHUNK_SAMPLES / 16000) if isinstance(e, UtteranceEnd)]
    ends += [e for e in gate.close() if isinstance(e, UtteranceEnd)]
    return [e.speech_s for e in ends]


def mqtt_events(messages: list[Received]) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{P}/kitchen/event"]


async def test_an_utterance_shorter_than_min_utterance_s_gets_no_final(tmp_path: Path) -> None:
    short = trim(synth_audio("alice", "Yes."))
    sentence = trim(synth_audio("bob", HELD_OUT_SENTENCES[1]))
    audio = np.concatenate([silence(0.5), short, silence(1.5), sentence, silence(1.0)])
    wav = write_wav(tmp_path / "talk.wav", audio)
    word_s, sentence_s = utterance_lengths(audio, GateSettings())
    bound = round((word_s + sentence_s) / 2, 2)
    assert GateSettings().min_utterance_s <= word_s < bound < sentence_s, (word_s, sentence_s)

    # The default bound: both utterances are long enough, and both get a final.
    replay = ReplaySource.from_samples("kitchen", to_chunkable_pcm(audio), realtime=False)
    control: list[PipelineEvent] = []
    pipeline = StreamPipeline(replay, random_bundle(["alice", "bob"]), PipelineSettings(decision=EVERYTHING))
    await asyncio.wait_for(pipeline.run(control.append), 60)
    assert sum(isinstance(e, Identification) and e.final for e in control) == 2

    model = random_model(tmp_path / "voices.safetensors", ["alice", "bob"])
    sources = file_source(wav, realtime=False, loop=False)
    extra = "[decision]\nmin_score = -1.0\nmin_confidence = 0.0\nmin_margin = 0.0\n"
    extra += f"[vad]\nmin_utterance_s = {bound}\n"
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, sources, mqtt, extra)
        async with Collector(broker.port, [f"{P}/kitchen/event", f"{P}/kitchen/speaking"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                await asyncio.to_thread(daemon.wait_log, lambda t: "source kitchen: audio ended" in t, 90)
                await sub.wait_for(lambda ms: any(e["final"] for e in mqtt_events(ms)), timeout=30)
                speaking = f"{P}/kitchen/speaking"
                await sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == speaking][-1:] == [b"OFF"])
            finally:
                daemon.kill()

    turns = [m.payload for m in sub.messages if m.topic == f"{P}/kitchen/speaking"]
    assert turns[-4:] == [b"ON", b"OFF", b"ON", b"OFF"], "both utterances were heard"
    finals = [e for e in mqtt_events(sub.messages) if e["final"]]
    assert len(finals) == 1, finals
    assert str(finals[0]["utterance_id"]).endswith("-000002"), "only the sentence, not the short word, got a final"
    assert float(str(finals[0]["speech_s"])) >= bound
    word_events = [e for e in mqtt_events(sub.messages) if str(e["utterance_id"]).endswith("-000001")]
    assert not any(e["final"] for e in word_events), word_events
    # The pipeline's own record agrees: the control run opened and closed the same two utterances.
    activity = [e.speaking for e in control if isinstance(e, SpeechActivity)]
    assert activity == [True, False, True, False]
