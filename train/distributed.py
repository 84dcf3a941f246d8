"""One training in several processes under torchrun: which process this is, its share of the work, and the
collectives that make the shares whole again. With one process every helper is the identity, so a run without
torchrun takes the same code path and gives the same numbers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
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

    def share(self, items: Sequence[T]) -> list[T]:
        """Items rank, rank + world, ...: interleaved, so that work sorted by size is spread evenly."""
        return list(items[self.rank :: self.world])

    def even_share(self, items: Sequence[T]) -> list[T]:
        """Items rank, rank + world, ..., without the tail not every rank would get: DDP needs the same number of
        backward passes on every rank."""
        usable = (len(items) // self.world) * self.world
        return list(items[self.rank : usable : self.world])

    def gather(self, part: T) -> list[T]:
        """Every rank's `part`, in rank order, on every rank."""
        if not self.distributed:
            return [part]
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, part)
        return parts

    def unshare(self, part: list[T]) -> list[T]:
        """The inverse of `share`: every rank's results, back in the order of the items they came from."""
        parts = self.gather(part)
        return [parts[i % self.world][i // self.world] for i in range(sum(len(p) for p in parts))]

    def total(self, *values: float) -> list[float]:
        """Sums over the ranks, in float64 so that counts stay exact."""
        if not self.distributed:
            return list(values)
        summed = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(summed)
        return [float(v) for v in summed]

    def total_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def smallest(self, value: int) -> int:
        """The smallest `value` of any rank."""
        if not self.distributed:
            return value
        least = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(least, op=dist.ReduceOp.MIN)
        return int(least.item())
