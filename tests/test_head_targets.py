"""The head's training targets: the speaker speaking at each step, except where the encoder cannot hear it yet."""

from __future__ import annotations

import numpy as np
import torch

from spkidd.encoder import GE2E_FEATURES, RollingEncoder
from train.fit_head import UNHEARD, step_targets


def test_steps_after_a_change_are_unheard_until_the_oldest_window_started_after_it() -> None:
    """Two windows of 2 s restarting every second in turn: a change at 1.5 s is heard by the oldest window only
    once the window that restarted at 2 s is the oldest, at 3 s."""
    owners = np.concatenate([np.zeros(24000, dtype=np.int64), np.ones(40000, dtype=np.int64)])
    frames = GE2E_FEATURES.n_frames(len(owners))
    ages = RollingEncoder(200, 2).window_ages(torch.zeros(1, dtype=torch.long), frames)[0].max(dim=0).values.numpy()
    targets = step_targets(owners, ages, GE2E_FEATURES, 5)
    last_frames = np.arange(4, frames, 5)
    first_new = int(np.argmax(np.arange(frames) * 160 + 200 >= 24000))
    assert first_new == 149
    assert (targets[last_frames < first_new] == 0).all()
    assert (targets[(last_frames >= first_new) & (last_frames < 300)] == UNHEARD).all()
    assert (targets[last_frames >= 300] == 1).all()


def test_one_voice_is_heard_at_every_step() -> None:
    owners = np.full(48000, 3, dtype=np.int64)
    frames = GE2E_FEATURES.n_frames(len(owners))
    ages = RollingEncoder(200, 2).window_ages(torch.zeros(1, dtype=torch.long), frames)[0].max(dim=0).values.numpy()
    assert (step_targets(owners, ages, GE2E_FEATURES, 5) == 3).all()
