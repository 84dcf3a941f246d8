"""Capped exponential backoff with jitter, shared by every source that reconnects.

Jitter keeps several sources (or several daemons) that lost the same camera or broker from retrying in lockstep;
the cap keeps a long outage from turning into hour-long silences after the device comes back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffConfig:
    """`initial_s` is the first delay, multiplied by `factor` per failed attempt up to `max_s`; each delay is
    spread by ±`jitter` (a fraction) and never exceeds `max_s`. A connection that delivered audio for at least
    `reset_after_s` counts as healthy, so the next outage starts again from `initial_s`."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25
    reset_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {self.jitter}")
        if self.reset_after_s < 0:
            raise ValueError(f"backoff reset_after_s must be >= 0, got {self.reset_after_s}")


class Backoff:
    """The delay sequence of one reconnecting component; `attempts` counts delays since the last reset."""

    def __init__(self, config: BackoffConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or BackoffConfig()
        self._rng = rng or random.Random()
        self.attempts = 0

    def base_delay(self) -> float:
        """The un-jittered delay the next call to next_delay() is centred on."""
        cfg = self.config
        # Cap the exponent so a very long outage cannot overflow the float.
        exponent = min(self.attempts, 64)
        return float(min(cfg.max_s, cfg.initial_s * cfg.factor**exponent))

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call counts one more failed attempt."""
        base = self.base_delay()
        self.attempts += 1
        spread = base * self.config.jitter
        return min(self.config.max_s, max(0.0, base + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self.attempts = 0

    def record_healthy(self, healthy_s: float) -> None:
        """Tell the backoff how long the connection that just ended delivered audio; resets it if long enough."""
        if healthy_s >= self.config.reset_after_s:
            self.reset()
