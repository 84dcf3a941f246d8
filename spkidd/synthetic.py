"""Synthetic speakers: espeak-ng voices far apart in variant and pitch, resampled to 16 kHz by sox.

The demo and the test suite use them so that spkidd can be shown and tested on a machine with no recordings."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import soundfile as sf

from spkidd import SAMPLE_RATE
from spkidd.features import int16_to_float

VOICES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "alice": ("-v", "en-us+f2", "-p", "70", "-s", "160"),
        "bob": ("-v", "en-us+m3", "-p", "35", "-s", "140"),
        "carol": ("-v", "en-gb+f4", "-p", "60", "-s", "175"),
        "dave": ("-v", "en-gb-scotland+m1", "-p", "45", "-s", "150"),
        "erin": ("-v", "en+f5", "-p", "80", "-s", "130"),
        "frank": ("-v", "en-us+m7", "-p", "25", "-s", "165"),
        "gina": ("-v", "en-us+f3", "-p", "50", "-s", "150"),
        "hank": ("-v", "en+m5", "-p", "40", "-s", "120"),
        "ivan": ("-v", "en-gb+m2", "-p", "30", "-s", "170"),
        "june": ("-v", "en-us+f1", "-p", "90", "-s", "185"),
        "kate": ("-v", "en-gb+f3", "-p", "75", "-s", "145"),
        "liam": ("-v", "en+m6", "-p", "60", "-s", "155"),
        "mona": ("-v", "en-029+f4", "-p", "65", "-s", "135"),
        "nick": ("-v", "en-us+m4", "-p", "20", "-s", "175"),
        "wendy": ("-v", "en+whisper", "-p", "50", "-s", "150"),
    }
)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please turn on the kitchen lights and start the coffee machine.",
    "I think it is going to rain this afternoon, so take an umbrella.",
    "Could you remind me to call the dentist tomorrow morning?",
    "The children are playing football in the garden behind the house.",
    "Set the thermostat to twenty one degrees for the evening.",
    "My favourite book is about a sailor who travels around the world.",
    "We should buy some bread, milk and fresh vegetables at the market.",
    "The train to the city leaves at half past seven every weekday.",
    "Remember to water the plants on the balcony before you leave.",
    "Music sounds much better with good speakers in a quiet room.",
    "Tonight we are having pasta with tomatoes, garlic and basil.",
    "The museum opens at ten and closes late on Friday evenings.",
    "Turn off the television when nobody is watching it, please.",
    "A gentle breeze moved through the tall grass in the meadow.",
    "What time does the supermarket close on Sunday afternoons?",
)


def synth_audio(voice: str, text: str) -> np.ndarray:
    """`text` spoken with one of VOICES: 16 kHz mono float32 samples (espeak-ng, resampled and normalized by sox)."""
    espeak = subprocess.run(["espeak-ng", *VOICES[voice], "--stdout", text], capture_output=True, check=True)
    to_raw = ["-r", "16000", "-c", "1", "-b", "16", "-e", "signed", "-t", "raw", "-", "gain", "-n", "-3"]
    raw = subprocess.run(
        ["sox", "-q", "-t", "wav", "-", *to_raw],
        input=espeak.stdout,
        capture_output=True,
        check=True,
    )
    return int16_to_float(np.frombuffer(raw.stdout, dtype=np.int16))


def synth_speech(voice: str, text: str, path: Path) -> Path:
    """Speaks `text` with one of VOICES into a 16 kHz mono 16-bit WAV at `path`."""
    sf.write(path, synth_audio(voice, text), SAMPLE_RATE, subtype="PCM_16")
    return path


def synth_corpus(root: Path, voices: Sequence[str], sentences: Sequence[str]) -> Path:
    """A folder per speaker, one clip per sentence: the layout `spkidd train` reads."""
    for voice in voices:
        (root / voice).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(sentences):
            synth_speech(voice, text, root / voice / f"{voice}_{i:02d}.wav")
    return root
