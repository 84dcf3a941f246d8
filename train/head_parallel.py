"""The household heads trained side by side, one core each.

A head's batch is hundreds of small operations, which one thread runs fastest (`train.trainer_base.one_torch_thread`),
so a second core is used by a second head: with two heads on two cores each process trains one of them, and an epoch
takes half the time. The extra processes are forked once the pools are encoded, so they read the parent's pools
without copying them. After every epoch each worker sends its heads' tensors, optimizer state and dropout generators,
then its heads' probabilities on the validation pool, so the parent holds the whole ensemble for checkpoints, early
stopping and the best model, as with one process. Every head draws its dropout masks from a generator of its own, and
every process draws every head's batches, so the model is the same whichever process trains which head (a test).
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

import torch
from torch import nn

from spkidd.encoder_model import EncoderSpeakerModel

DROPOUT_SEED_STRIDE = 7919
"""Head i's dropout generator starts from seed + i x this: the heads' masks differ, and they repeat from the seed."""


def step_cosines(model: EncoderSpeakerModel, hidden: torch.Tensor) -> torch.Tensor:
    """The head's cosines with every speaker at every step of stored encoder outputs (batch, steps, 256)."""
    zeros = torch.zeros(1, hidden.shape[0], model.config.head_hidden)
    return model.cosine(model.embeddings(model.encoder.net.embed(hidden), zeros)[0])


class HeadNet(nn.Module):
    """The heads' training forward as one module, so that DistributedDataParallel sees a single forward(): one
    batch of stored encoder outputs per head run -> each one's cosines. Each head's dropout draws from its own
    generator state, so its masks do not depend on which other heads run in the same process."""

    def __init__(self, heads: list[EncoderSpeakerModel], seed: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(heads)
        self.dropout_states = [
            torch.Generator().manual_seed(seed + i * DROPOUT_SEED_STRIDE).get_state() for i in range(len(heads))
        ]

    @property
    def heads(self) -> list[EncoderSpeakerModel]:
        """The registered heads, typed (a ModuleList yields plain Modules)."""
        return cast(list[EncoderSpeakerModel], list(self.members))

    def forward(self, hidden: list[torch.Tensor], which: list[int]) -> list[torch.Tensor]:
        out = []
        for index, x in zip(which, hidden, strict=True):
            with self._own_dropout(index):
                out.append(step_cosines(self.heads[index], x))
        return out

    @contextmanager
    def _own_dropout(self, index: int) -> Iterator[None]:
        outside = torch.get_rng_state()
        torch.set_rng_state(self.dropout_states[index])
        try:
            yield
        finally:
            self.dropout_states[index] = torch.get_rng_state()
            torch.set_rng_state(outside)


@dataclass
class EpochPart:
    """One process's share of an epoch: its heads' training sums, and what the parent needs to hold their state."""

    loss_sum: float
    correct: int
    seen: int
    tensors: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizer: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    dropout: dict[int, torch.Tensor] = field(default_factory=dict)

    def packed(self, ensemble: HeadNet, which: list[int], optimizer: torch.optim.Optimizer) -> EpochPart:
        """With the trained tensors of the `which` heads (the frozen encoder's are the same everywhere)."""
        for index in which:
            trained = [(name, p) for name, p in ensemble.heads[index].named_parameters() if p.requires_grad]
            self.tensors[index] = {name: p.detach() for name, p in trained}
            self.optimizer |= {(index, name): optimizer.state[p] for name, p in trained if p in optimizer.state}
            self.dropout[index] = ensemble.dropout_states[index]
        return self

    def install(self, ensemble: HeadNet, optimizer: torch.optim.Optimizer) -> None:
        """Into the parent's copies, in place (the optimizer keeps referring to the same parameters)."""
        with torch.no_grad():
            for index, tensors in self.tensors.items():
                for name, value in tensors.items():
                    ensemble.heads[index].get_parameter(name).copy_(value)
        for (index, name), state in self.optimizer.items():
            optimizer.state[ensemble.heads[index].get_parameter(name)] = state
        for index, generator in self.dropout.items():
            ensemble.dropout_states[index] = generator


DIED = "a training worker process died (out of memory, or killed)"


class WorkerFailed(RuntimeError):
    """A head's worker process raised or died; its traceback, when it had one, is the message."""


TrainPart = Callable[[list[int], int, float], EpochPart]
"""(heads, epoch, margin) -> the epoch's part of those heads."""
ValidatePart = Callable[[list[int]], torch.Tensor]
"""heads -> their summed probabilities at every validation step."""


class HeadWorkers:
    """Forked processes training their heads in step with the parent's epochs; closed on exit, Ctrl-C included."""

    def __init__(self, which: list[list[int]], train_part: TrainPart, validate_part: ValidatePart) -> None:
        self.which = which
        self._train_part, self._validate_part = train_part, validate_part
        self._connections: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []

    def __enter__(self) -> HeadWorkers:
        context = multiprocessing.get_context("fork")
        for heads in self.which:
            parent_end, child_end = context.Pipe()
            parents_ends = [*self._connections, parent_end]
            process = context.Process(target=self._serve, args=(child_end, parents_ends, heads), daemon=True)
            process.start()
            child_end.close()
            self._connections.append(parent_end)
            self._processes.append(process)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        """After the last epoch the workers are told to end; after Ctrl-C or an error they are killed at once (a
        worker may be in the middle of an epoch nobody will read)."""
        for connection in self._connections:
            if kind is None:
                with suppress(OSError):
                    connection.send(None)
            connection.close()
        for process in self._processes:
            if kind is not None:
                process.kill()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def begin_epoch(self, epoch: int, margin: float) -> None:
        for connection in self._connections:
            try:
                connection.send((epoch, margin))
            except OSError:
                raise WorkerFailed(DIED) from None

    def train_parts(self) -> list[EpochPart]:
        return [cast(EpochPart, self._receive(c)) for c in self._connections]

    def validation_parts(self) -> list[torch.Tensor]:
        return [cast(torch.Tensor, self._receive(c)) for c in self._connections]

    @staticmethod
    def _receive(connection: Connection) -> object:
        try:
            reply = connection.recv()
        except (EOFError, OSError):
            raise WorkerFailed(DIED) from None
        if isinstance(reply, WorkerFailed):
            raise reply
        return reply

    def _serve(self, connection: Connection, parents_ends: list[Connection], heads: list[int]) -> None:
        """The worker: Ctrl-C is the parent's to handle (it closes the workers), SIGTERM ends it as usual. It
        closes the copies of the parent's ends it was forked with, so that it reads the end of its pipe when the
        parent dies, however it dies."""
        for end in parents_ends:
            end.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_num_threads(1)
        while True:
            try:
                command = connection.recv()
            except (EOFError, OSError):
                return
            if command is None:
                return
            epoch, margin = command
            try:
                connection.send(self._train_part(heads, epoch, margin))
                connection.send(self._validate_part(heads))
            except Exception:
                with suppress(OSError):
                    connection.send(WorkerFailed(f"a training worker failed:\n{traceback.format_exc()}"))
                return
