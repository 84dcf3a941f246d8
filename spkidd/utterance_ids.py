"""Utterance ids that stay readable and never repeat: `<source>-<run>-<count>`.

An automation that de-duplicates events by id must never see an old id again, so the count goes on across a
stream's restarts and reloads, and `run` (the daemon's start time, UTC to the second) tells daemon runs apart.
Without a run (one-shot tools such as `spkidd listen`) ids are `<source>-<count>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


def run_stamp(now: datetime | None = None) -> str:
    """A run's part of its ids, e.g. 20261126T131617."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")


@dataclass
class UtteranceIds:
    source: str
    run: str = ""
    count: int = 0

    def next(self) -> str:
        self.count += 1
        prefix = f"{self.source}-{self.run}" if self.run else self.source
        return f"{prefix}-{self.count:06d}"
