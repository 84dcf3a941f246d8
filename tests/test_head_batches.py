"""The head's training batches: sequences of similar length together, every sequence once, new company each epoch."""

from __future__ import annotations

import numpy as np

from train.fit_head import length_sorted_batches


def _padding(lengths: np.ndarray, batches: list[list[int]]) -> float:
    """Share of a batch's padded steps that are padding, over all batches."""
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - float(lengths.sum()) / padded


def test_every_sequence_is_in_one_batch_of_the_asked_size() -> None:
    lengths = np.random.default_rng(0).integers(8, 60, 203)
    batches = length_sorted_batches(lengths.tolist(), 32, np.random.default_rng(1))
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert sorted(len(b) for b in batches) == [11] + [32] * 6


def test_batches_waste_little_on_padding_and_change_from_epoch_to_epoch() -> None:
    lengths = np.random.default_rng(0).integers(8, 60, 800)
    rng = np.random.default_rng(1)
    first, second = length_sorted_batches(lengths.tolist(), 32, rng), length_sorted_batches(lengths.tolist(), 32, rng)
    order = np.random.default_rng(2).permutation(800)
    drawn = [order[i : i + 32].tolist() for i in range(0, 800, 32)]
    assert _padding(lengths, drawn) > 0.3
    assert _padding(lengths, first) < 0.15
    assert {frozenset(b) for b in first} != {frozenset(b) for b in second}


def test_no_sequences_no_batches() -> None:
    assert length_sorted_batches([], 32, np.random.default_rng(0)) == []
