"""`spkidd listen`: one source through the daemon's own pipeline, shown live in the terminal or as JSON lines.

The view is a pure function of the events it has seen (plus the per-batch probabilities for the live bars), so
what it shows is exactly what the MQTT side would publish.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from spkidd.audio.sources import make_source
from spkidd.events import Identification, SourceStatus, SpeechActivity, as_percent
from spkidd.modelfile import ModelBundle
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.turns import Turn, UtteranceTurns

_BAR_WIDTH = 30
_LOG_LINES = 10


class SourceFailedError(Exception):
    """The source stopped with an error (a file that is not audio, say): `spkidd listen` must not end as if the
    recording had simply run out."""


@dataclass
class ListenView:
    """What the terminal shows: source health, who is speaking now, live probability bars, and who spoke when in
    the last utterances (their turns, looking back: spkidd.turns)."""

    source: str
    model: str
    online: bool = False
    status: str = "starting"
    speaking: bool = False
    utterance_id: str = ""
    current: Identification | None = None
    live: dict[str, float] = field(default_factory=dict)
    utterance: UtteranceTurns = field(default_factory=UtteranceTurns)
    turns: deque[Turn] = field(default_factory=lambda: deque(maxlen=_LOG_LINES))

    def on_event(self, event: PipelineEvent) -> None:
        if isinstance(event, SourceStatus):
            self.online, self.status = event.online, event.detail or ("online" if event.online else "offline")
        elif isinstance(event, SpeechActivity):
            self.speaking = event.speaking
            if event.speaking:
                self.utterance_id, self.current, self.live = event.utterance_id, None, {}
        else:
            self.current = event
            self.turns.extend(self.utterance.add(event))

    def on_progress(self, utterance_id: str, top_k: dict[str, float]) -> None:
        if utterance_id == self.utterance_id:
            self.live = top_k

    def render(self) -> RenderableType:
        state = Text("● speaking", style="bold green") if self.speaking else Text("○ silent", style="dim")
        health = Text(self.status, style="green" if self.online else "yellow")
        header = Text.assemble(f"{self.source}  ", state, "  ", health, f"  model {self.model}")
        if self.current is None:
            now = Text("listening…", style="dim")
        else:
            style = "bold red" if self.current.speaker == "unknown" else "bold cyan"
            now = Text.assemble(
                ("now: ", "bold"),
                (self.current.speaker, style),
                f"  {as_percent(self.current.confidence)}  ({self.current.event_type}, {self.current.utterance_id})",
            )
        bars = Table.grid(padding=(0, 1))
        for label, prob in self.live.items():
            filled = round(prob * _BAR_WIDTH)
            bar = Text("█" * filled + "·" * (_BAR_WIDTH - filled), style="cyan")
            bars.add_row(label, bar, f"{as_percent(prob):>4}")
        log = Table("utterance", "audio s", "speaker", "confidence", box=None)
        for turn in self.turns:
            span = f"{turn.start:.1f}-{turn.end:.1f}"
            log.add_row(turn.utterance_id, span, turn.speaker, as_percent(turn.confidence))
        return Panel(Group(header, now, bars, Text(""), log), title="spkidd listen")


async def listen(
    bundle: ModelBundle,
    spec: str,
    settings: PipelineSettings,
    *,
    name: str = "listen",
    realtime: bool = True,
    json_lines: bool,
    out: TextIO = sys.stdout,
) -> int:
    """Runs until the source ends or SIGINT/SIGTERM; returns how many identification events were produced.
    Raises SourceSpecError before anything runs if `spec` names no usable source, and SourceFailedError (after
    the events it gave) if the source failed, or at once for a microphone on a machine with no input device: a
    try-it-live command that waited for one would look hung."""
    view = ListenView(name, f"{bundle.name} {bundle.version}".strip())
    source = make_source(spec, name, realtime=realtime, on_status=view.on_event, wait_for_devices=False)
    failures: list[str] = []

    def emit(event: PipelineEvent) -> None:
        if isinstance(event, SourceStatus) and event.failed:
            failures.append(event.detail)
        if json_lines:
            if isinstance(event, Identification):
                out.write(json.dumps(event.to_dict()) + "\n")
                out.flush()
        else:
            view.on_event(event)

    pipeline = StreamPipeline(source, bundle, settings, on_progress=None if json_lines else view.on_progress)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopping.append(loop.create_task(pipeline.stop())))
    try:
        if json_lines:
            await pipeline.run(emit)
        else:
            with Live(view.render(), refresh_per_second=8, transient=False) as live:
                task = asyncio.create_task(pipeline.run(emit))
                while not task.done():
                    live.update(view.render())
                    await asyncio.wait({task}, timeout=0.125)
                live.update(view.render())
                await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if stopping:
            await asyncio.gather(*stopping)
    if failures:
        raise SourceFailedError(failures[0])
    return pipeline.stats.events
