"""One training in several processes under torchrun: which process this is, its share of the work, and the
collectives that make the shares whole again. With one process every helper is the identity, so a run without
torchrun takes the same code path and gives the same numbers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes: rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes checkpoints and the model: the others hold the same numbers."""
        return self.rank == 0

    def threads(self, requested: int | None) -> int:
        """The processes share the cores: more threads than cores in all only contend for them."""
        return requested or max(1, (os.cpu_count() or 1) // self.world)

    def even_share(self, items: Sequence[T]) -> list[T]:
        """Items rank, rank + world, ..., without the tail not every rank would get: DDP needs the same number of
        backward passes on every rank."""
        usable = (len(items) // self.world) * self.world
        return list(items[self.rank : usable : self.world])
