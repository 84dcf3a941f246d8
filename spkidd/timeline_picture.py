"""A picture of who spoke when in a long recording (`spkidd identify --plot`): a lane a voice, a bar a turn, which
shows at a glance who spoke most, who interrupted whom and where the model was unsure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spkidd.events import UNKNOWN, as_percent
from spkidd.identify import FileResult
from spkidd.plots import pyplot
from spkidd.turns import amount_of_speech, clock

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Lane:
    speaker: str
    seconds: float
    turns: tuple[tuple[float, float], ...]
    """(start, length) of each turn, in seconds from the start of the recording."""


def timeline_lanes(result: FileResult) -> list[Lane]:
    """One lane a voice, the one that spoke most at the top and `unknown` at the bottom, whatever its share."""
    order = sorted(result.speakers, key=lambda speaker: (speaker == UNKNOWN, -result.speakers[speaker]))
    return [
        Lane(
            speaker,
            result.speakers[speaker],
            tuple(
                (turn["start"], turn["end"] - turn["start"]) for turn in result.timeline if turn["speaker"] == speaker
            ),
        )
        for speaker in order
    ]


def picture_name(path: Path, taken: set[str]) -> str:
    """`NAME.timeline.png` after the recording's file name; two recordings of one name in different folders get
    `NAME-2.timeline.png` and so on rather than one picture over the other."""
    name, n = f"{path.stem}.timeline.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}.timeline.png"
    taken.add(name)
    return name


TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800)
"""Clock-round distances between the time axis's ticks (a second up to three hours)."""


def tick_step(duration_s: float, most: int = 12) -> int:
    """The shortest clock-round step that puts at most `most` ticks on the axis: matplotlib's own steps over an
    hour's recording were 500 s, which read as 8:20, 16:40, ..."""
    return next((step for step in TICK_STEPS_S if duration_s / step <= most), TICK_STEPS_S[-1])


def timeline_figure(result: FileResult) -> Figure:
    """A lane a voice, a bar a turn, the time axis read as a clock (m:ss, or h:mm:ss for an hour or more)."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    plt = pyplot()
    lanes = timeline_lanes(result)
    width = min(20.0, max(8.0, result.duration_s / 15))
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.5 * len(lanes)))
    colours = plt.get_cmap("tab10")
    for row, lane in enumerate(reversed(lanes)):
        colour = "lightgrey" if lane.speaker == UNKNOWN else colours((len(lanes) - 1 - row) % 10)
        ax.broken_barh(lane.turns, (row - 0.35, 0.7), facecolors=colour)
    ax.set_yticks(
        range(len(lanes)), [f"{lane.speaker}: {amount_of_speech(lane.seconds)} of speech" for lane in reversed(lanes)]
    )
    ax.set_xlim(0, max(result.duration_s, 1e-3))
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.xaxis.set_major_locator(MultipleLocator(tick_step(result.duration_s)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda seconds, _: clock(seconds, 0)))
    ax.set_xlabel("time into the recording")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"{Path(result.path).name}: who spoke when; {_answer(result)}", fontsize=10)
    fig.tight_layout()
    return fig


def _answer(result: FileResult) -> str:
    """A conversation is named after the voice that spoke most, not heard as a whole: the title says which, with
    that voice's share of the speech (its confidence beside it read as a share: "alice (100%)" of a third)."""
    if result.by_timeline:
        return f"spoke most: {result.speaker} ({as_percent(result.top_k.get(result.speaker, 0.0))} of the speech)"
    return f"the file as a whole: {result.speaker} ({as_percent(result.confidence)})"


def draw_timeline(result: FileResult, picture: Path) -> None:
    fig = timeline_figure(result)
    fig.savefig(picture, dpi=90)
    pyplot().close(fig)
