"""Small training inputs for in-process trainer tests."""

from __future__ import annotations

import numpy as np

from spkidd import SAMPLE_RATE
from train.fit import Split


def tone_split() -> Split:
    """Three tones in a little noise, four clips each: enough for a network to learn something in a few epochs."""
    rng = np.random.default_rng(0)
    tones = [np.sin(2 * np.pi * f * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE) for f in (180.0, 260.0, 390.0)]
    clips = [0.3 * tone + 0.02 * rng.standard_normal(len(tone)) for tone in tones for _ in range(4)]
    labels = [i for i in range(3) for _ in range(4)]
    return Split(clips[::2] + clips[1::4], labels[::2] + labels[1::4], clips[3::4], labels[3::4])
