"""Checking an order of names in what a live stream produced, where repeats and extra names in between are fine."""

from __future__ import annotations


def is_subsequence(wanted: list[str], seen: list[str]) -> bool:
    """`wanted` appears in `seen` in this order, not necessarily side by side."""
    remaining = iter(seen)
    return all(name in remaining for name in wanted)
