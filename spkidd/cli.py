"""The `spkidd` command line. Heavy modules are imported inside each command so `spkidd --help` is instant."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from spkidd import __version__
from spkidd.terminal import error, warning

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from spkidd.identify import FileResult
    from spkidd.modelfile import ModelBundle

app = typer.Typer(
    name="spkidd",
    help="Streaming, real-time speaker identification: train, evaluate, listen, run the MQTT daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spkidd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    try:
        app()
    finally:
        _skip_collection_at_exit()


def _skip_collection_at_exit() -> None:
    """The process is ending and the OS takes its memory back, but the interpreter's last garbage collections walk
    every object torch made: 0.42-0.47 s of every command (after `import torch`: 0.14-0.22 s with this). Frozen
    objects are left out of them; atexit handlers still run."""
    gc.freeze()


def _one_torch_thread() -> None:
    """Scoring and streaming run small LSTM steps that a second intra-op thread cannot speed up, and on a busy
    machine (the daemon beside ffmpeg, a second job) threads that wait for a core made a 2-s item take 4.1 s
    instead of 0.25 s (measured with `spkidd evaluate` beside a test run on 2 cores)."""
    import torch

    torch.set_num_threads(1)


_RENAMED_SETTINGS = {"window": "window_s", "lr": "learning_rate"}
"""`spkidd train`'s options are named as the TrainSettings fields they set, but for these."""
_TRAIN_INPUTS = frozenset({"data", "out", "label_pattern", "val", "noise_dir", "cache_dir", "resume"})
"""The options that say what to train on and where to write it (TrainInputs), not how to train."""


def _train_settings(options: dict[str, Any]) -> dict[str, Any]:
    """TrainSettings' arguments from `spkidd train`'s options, so that they are listed once, in the signature; an
    option that is neither an input nor a setting makes TrainSettings refuse it instead of being dropped."""
    return {_RENAMED_SETTINGS.get(name, name): value for name, value in options.items() if name not in _TRAIN_INPUTS}


@app.command()
def train(
    ctx: typer.Context,
    data: Path = typer.Argument(
        ..., help="Manifest CSV (path,speaker[,start,end]), a folder per speaker, or a flat folder."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (safetensors)."),
    encoder: str = typer.Option(
        "ge2e",
        help="ge2e (a GRU on the pretrained speaker encoder, best with minutes of speech) or none (the network "
        "trained from scratch). An option whose help begins with ge2e: or none: applies to that encoder only; the "
        "others apply to both.",
    ),
    windows: int = typer.Option(2, help="ge2e: staggered encoder windows (each restarts from zero in turn)."),
    window_frames: int = typer.Option(200, help="ge2e: length of an encoder window in 10-ms frames."),
    head_hidden: int = typer.Option(128, help="ge2e: units of the household GRU on top of the encoder."),
    pools: int = typer.Option(6, help="ge2e: passes over the training audio, joined and augmented anew, encoded once."),
    heads: int | None = typer.Option(
        None, help="ge2e: GRU heads trained side by side and averaged (default 2; 1 with --tune-top)."
    ),
    tune_top: bool = typer.Option(False, help="ge2e: train the encoder's top layer too (the LSTM stays frozen)."),
    denoise: bool = typer.Option(
        False, help="ge2e: subtract the noise floor (fans, a street) before the encoder: for noisy homes."
    ),
    label_pattern: str | None = typer.Option(
        None, help="Regex with a named group 'speaker' for a flat folder, e.g. '_(?P<speaker>\\[a-z]+)_'."
    ),
    val: Path | None = typer.Option(None, help="Validation data (same layouts); default: a stratified split."),
    noise_dir: Path | None = typer.Option(
        None, help="Folder of noise recordings to mix in with --augment (besides generated noise)."
    ),
    window: float = typer.Option(
        3.0,
        help="Window in seconds that the threshold's calibration and `spkidd evaluate` score; with --encoder none "
        "also the training and validation window (long recordings are cut into such windows).",
    ),
    epochs: int | None = typer.Option(
        None, help="Maximum epochs (default: 60 with ge2e; chosen from the amount of data with none)."
    ),
    patience: int | None = typer.Option(
        None, help="Early-stopping patience in epochs (default: 8 with ge2e; from the data with none)."
    ),
    batch_size: int | None = typer.Option(
        None, help="Batch size (default: 32 joined sequences with ge2e; 32 or 64 windows, from the data, with none)."
    ),
    lr: float = typer.Option(3e-3, help="Learning rate (ge2e: a tuned top layer of the encoder gets a tenth)."),
    weight_decay: float = typer.Option(1e-4, help="Weight decay (ge2e: the head gets 100 times this)."),
    optimizer: str = typer.Option("adam", help="none: adam or rmsprop (ge2e always uses AdamW)."),
    cell: str = typer.Option("gru", help="none: recurrent cell, gru or lstm."),
    hidden: int = typer.Option(192, help="none: recurrent units per layer."),
    layers: int = typer.Option(2, help="none: recurrent layers."),
    dropout: float = typer.Option(0.2, help="none: dropout."),
    margin: float = typer.Option(0.2, help="Additive angular margin (radians) for similar voices; 0 = plain softmax."),
    balance: str = typer.Option(
        "weights",
        help="Imbalance handling: weights (the loss weighs each speaker inversely to its share), sampling "
        "(--encoder none only: windows drawn evenly per speaker; with ge2e the same as none) or none.",
    ),
    augment: bool = typer.Option(True, help="Noise, reverberation and gain (none: also SpecAugment)."),
    features: str = typer.Option("logmel", help="none: logmel or mfcc."),
    seed: int = typer.Option(0, help="Random seed."),
    threads: int | None = typer.Option(
        None,
        help="CPU threads for training (default: all cores; the ge2e heads train on one thread each, in as many "
        "processes as threads).",
    ),
    target_far: float = typer.Option(
        0.05,
        help="False-accept rate the unknown-speaker threshold is calibrated to (on held-out speech of the other "
        "speakers, or speed-changed voices without it).",
    ),
    resume: bool = typer.Option(False, help="Continue from OUT.ckpt after an interruption."),
    cache_dir: Path | None = typer.Option(None, help="Decoded-audio cache (default ~/.cache/spkidd/audio)."),
) -> None:
    """Train a speaker-ID model from labelled audio."""
    from rich.console import Console

    from spkidd.dataset import DataError
    from spkidd.modelfile import ModelFileError
    from train.encoder_weights import EncoderWeightsError
    from train.fit import TrainSettings
    from train.run import TrainInputs, run_training

    try:
        settings = TrainSettings(**_train_settings(ctx.params))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    inputs = TrainInputs(data, out, label_pattern, val, noise_dir, cache_dir, resume)
    console = Console(stderr=True, soft_wrap=True)
    try:
        code = run_training(inputs, settings, console)
    except (DataError, ModelFileError, EncoderWeightsError, ValueError) as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model file."),
    data: Path = typer.Argument(..., help="Held-out data: manifest CSV, folder per speaker, or flat folder."),
    report: Path | None = typer.Option(None, help="Folder for report.json and confusion.png."),
    label_pattern: str | None = typer.Option(None, help="Regex with a named group 'speaker' for a flat folder."),
    cache_dir: Path | None = typer.Option(None, help="Decoded-audio cache (default ~/.cache/spkidd/audio)."),
    open_set: bool = typer.Option(
        False,
        "--open-set",
        help="Open-set evaluation: speakers the model does not know are strangers (if DATA has none, a fifth of "
        "the known speakers is held out). Reports EER and false-accept/false-reject rates at the model's threshold.",
    ),
) -> None:
    """Accuracy, top-k and confusion matrix of a model on held-out audio (or open-set figures with --open-set)."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    if report is not None:
        _check_report_folder(report, console)
    _one_torch_thread()
    if open_set:
        _evaluate_open_set(model, data, report, label_pattern, cache_dir, console)
        return
    result = _closed_set_result(model, data, label_pattern, cache_dir, console)
    out = Console()
    _print_closed_set(out, result, f"{model.name} on {data.name}: {result['n']} items")
    if report is not None:
        from spkidd.evaluation import write_report

        _write_report(lambda: write_report(result, report), report, console)
        out.print(f"report: {report / 'report.json'}, {report / 'confusion.png'}", markup=False)


def _check_report_folder(report: Path, console: Console, what: str = "the report") -> None:
    """Scoring a data set takes minutes: a report folder that cannot be written is refused before it, not after.
    A file is created and removed in it, as only that shows (as root too) that it can be written."""
    import tempfile

    try:
        report.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=report):
            pass
    except OSError as exc:
        error(console, f"cannot write {what} in {report}: {exc.strerror or exc}")
        raise typer.Exit(2) from None


def _write_report(write: Callable[[], None], report: Path, console: Console) -> None:
    """The folder was writable before scoring, but a full disk or a folder removed since still fails the write."""
    try:
        write()
    except OSError as exc:
        error(console, f"the figures above could not be written to {report}: {exc}")
        raise typer.Exit(2) from None


def _closed_set_result(
    model: Path, data: Path, label_pattern: str | None, cache_dir: Path | None, console: Console
) -> dict[str, Any]:
    """Every item of a speaker the model knows decoded and scored, with progress; input that cannot be evaluated
    ends the command with the reason."""
    from spkidd.audio_cache import AudioCache, default_cache_dir, skipped_note
    from spkidd.dataset import DataError, discover_and_tell
    from spkidd.evaluation import closed_set_report, score_rows
    from spkidd.modelfile import ModelFileError, load_model
    from spkidd.progress import progress_bar

    try:
        bundle = load_model(model)
        rows = discover_and_tell(data, label_pattern, console)
        with progress_bar(console) as bar:
            decoding = bar.add_task("decoding", total=len(rows), status="")
            scored = bar.add_task("scoring", total=len(rows), status="")
            scoring = score_rows(
                bundle,
                rows,
                AudioCache(cache_dir or default_cache_dir()),
                lambda n: bar.advance(decoding, n),
                lambda n: bar.advance(scored, n),
            )
        if scoring.skipped:
            warning(console, skipped_note(scoring.skipped, rows))
        return closed_set_report(bundle, scoring)
    except (ModelFileError, DataError, ValueError) as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None


def _print_closed_set(out: Console, result: dict[str, Any], title: str) -> None:
    """The figures, then the 20 worst-recognised speakers: their top-1, and who the shipped threshold names right
    and answers `unknown` (top-1 alone said 100% for every speaker while one answer in seven was `unknown`)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    shipped = result["at_threshold"]
    table.add_row(f"named right at the shipped threshold ({result['min_score']:.3f})", f"{shipped['named_right']:.2%}")
    table.add_row("answered unknown", f"{shipped['unknown']:.2%}")
    table.add_row("named wrong", f"{shipped['named_wrong']:.2%}")
    for k, value in result["top_k"].items():
        table.add_row(f"top-{k} accuracy", f"{value:.2%}")
    for seconds, value in result["top1_after_s"].items():
        table.add_row(f"top-1 after {seconds} s of speech", f"{value:.2%}")
    table.add_row("skipped items", str(result["skipped"]))
    for speaker, n in result["unknown_speakers"].items():
        table.add_row(f"items of unknown speaker {escape(speaker)}", str(n))
    out.print(table)
    if result["unknown_speakers"]:
        out.print("items of speakers the model does not know are left out (--open-set scores them)")
    recall = Table(title="per speaker, worst first")
    for column in ("speaker", "items", "top-1", "named right", "unknown"):
        recall.add_column(column, justify="left" if column == "speaker" else "right")
    ranked = sorted(
        (v["at_threshold"]["named_right"], v["recall"], s, v) for s, v in result["per_speaker"].items() if v["n"]
    )
    for named_right, value, speaker, v in ranked[:20]:
        unknown = v["at_threshold"]["unknown"]
        recall.add_row(escape(speaker), str(v["n"]), f"{value:.2%}", f"{named_right:.2%}", f"{unknown:.2%}")
    out.print(recall)


def _evaluate_open_set(
    model: Path, data: Path, report: Path | None, label_pattern: str | None, cache_dir: Path | None, console: Console
) -> None:
    from rich.console import Console

    from spkidd.evaluation import write_open_set_report

    result = _open_set_result(model, data, label_pattern, cache_dir, console)
    out = Console()
    out.print(
        f"open set: {result['genuine_items']} items of {result['enrolled_speakers']} enrolled speakers, "
        f"{result['stranger_items']} items of {len(result['strangers'])} strangers"
    )
    out.print(f"  EER {result['eer']:.2%} (threshold {result['eer_threshold']:.3f})")
    out.print(
        f"  at the model's threshold {result['operating_threshold']:.3f}: false accepts {result['far']:.2%}, "
        f"false rejects {result['frr']:.2%}; top-1 among enrolled {result['top1_enrolled']:.2%}"
    )
    if report is not None:
        _write_report(lambda: write_open_set_report(result, report), report, console)
        out.print(f"report: {report / 'open_set.json'}, {report / 'open_set.png'}", markup=False)


def _open_set_result(
    model: Path, data: Path, label_pattern: str | None, cache_dir: Path | None, console: Console
) -> dict[str, Any]:
    """Every item scored against the enrolled speakers, strangers' too; input that cannot be evaluated ends the
    command with the reason."""
    from spkidd.audio_cache import AudioCache, default_cache_dir, skipped_note
    from spkidd.dataset import DataError, discover_and_tell
    from spkidd.evaluation import open_set_report, score_items
    from spkidd.modelfile import ModelFileError, load_model
    from spkidd.progress import progress_bar

    try:
        bundle = load_model(model)
        rows = discover_and_tell(data, label_pattern, console)
        bundle, strangers = _with_strangers(bundle, sorted({r.speaker for r in rows}), data, console)
        with progress_bar(console) as bar:
            decoding = bar.add_task("decoding", total=len(rows), status="")
            scored = bar.add_task("scoring", total=len(rows), status="")
            items, skipped = score_items(
                bundle,
                rows,
                AudioCache(cache_dir or default_cache_dir()),
                lambda n: bar.advance(decoding, n),
                lambda n: bar.advance(scored, n),
            )
        if skipped:
            warning(console, skipped_note(skipped, rows))
        return open_set_report(bundle, items, strangers)
    except (ModelFileError, DataError, ValueError) as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None


def _with_strangers(
    bundle: ModelBundle, speakers: list[str], data: Path, console: Console
) -> tuple[ModelBundle, list[str]]:
    """The speakers of DATA the model does not know; without any, a fifth of the known ones are forgotten by the
    model to stand in for strangers (optimistic, as the network has heard them), and the user is told so."""
    from spkidd.evaluation import hold_out

    strangers = [s for s in speakers if s not in bundle.labels]
    if strangers:
        return bundle, strangers
    known = [s for s in speakers if s in bundle.labels]
    strangers = known[::5] if len(known) >= 2 else []
    bundle = hold_out(bundle, strangers)
    warning(
        console,
        f"no unknown speakers in {data}; holding out {len(strangers)} known speaker(s) as strangers "
        "(the network has heard them in training, so this is optimistic)",
    )
    return bundle, strangers


MIN_CHUNK_S = 0.5
"""`identify --chunk`: 0 cannot cut a recording at all, and chunks shorter than half a second carry too little speech
to answer on."""


@dataclass
class _FileProgress:
    """One file's line of identify's progress bar, a line of its own for each pass (the timeline's, then the file's
    as a whole): rich cannot take a line's total back, and a full bar that sat for 17 s of an hour's recording
    looked hung. A line pulses until its pass says how far it is, and while the length is not known."""

    bar: Progress
    name: str
    task: TaskID | None = None

    def begin(self, what: str) -> None:
        self.end()
        self.task = self.bar.add_task(f"{what}: {self.name}", total=None)

    def seconds(self, done_s: float, total_s: float | None) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=done_s, total=total_s)

    def end(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None


@app.command()
def identify(
    model: Path = typer.Argument(..., help="Model file."),
    audio: list[Path] = typer.Argument(
        ..., help="Audio files (any format ffmpeg reads), or folders: each audio file in them, subfolders too."
    ),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per file and line."),
    chunk: float = typer.Option(
        3.0,
        min=MIN_CHUNK_S,
        help=f"Chunk length in seconds (at least {MIN_CHUNK_S:g}) for the answer about a long recording as a whole.",
    ),
    top: int = typer.Option(5, help="How many candidates to show."),
    plot: Path | None = typer.Option(
        None, help="Folder for a picture of each long recording's timeline (NAME.timeline.png): a lane a voice."
    ),
) -> None:
    """Who is speaking in each file; long recordings also get a timeline of who spoke when."""

    from rich.console import Console

    from spkidd.modelfile import ModelFileError, load_model

    console = Console(stderr=True, soft_wrap=True)
    if plot is not None:
        _check_report_folder(plot, console, "the timelines' pictures")
    _one_torch_thread()
    try:
        bundle = load_model(model)
    except ModelFileError as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None
    results, interrupted = _identify_until_interrupted(bundle, _audio_paths(audio), chunk, top, console, json_output)
    if not json_output:
        _print_identified(results)
    if plot is not None:
        _draw_timelines(results, plot, chunk, console)
    if interrupted:
        raise typer.Exit(130)
    if any(r.error for r in results):
        raise typer.Exit(1)


def _identify_until_interrupted(
    bundle: ModelBundle, paths: list[Path], chunk: float, top: int, console: Console, json_output: bool
) -> tuple[list[FileResult], bool]:
    """The files' results (with --json each printed as it comes), and whether Ctrl-C ended the run before the last:
    the answers already found are kept, not lost with the file being read."""
    import dataclasses
    import json

    results: list[FileResult] = []
    try:
        for result in _identify_files(bundle, paths, chunk, top, console):
            results.append(result)
            if json_output:
                typer.echo(json.dumps(dataclasses.asdict(result)))
    except KeyboardInterrupt:
        warning(console, f"interrupted: {len(results)} of {len(paths)} file(s) identified")
        return results, True
    return results, False


def _audio_paths(paths: list[Path]) -> list[Path]:
    """The files as given, and in place of a folder its audio files (a folder of a day's recordings was answered
    'no such file'); a folder without any stays, to be answered as such."""
    from spkidd.dataset import audio_files

    expanded = []
    for path in paths:
        expanded += (audio_files(path) or [path]) if path.is_dir() else [path]
    return expanded


def _identify_files(
    bundle: ModelBundle, audio: list[Path], chunk: float, top: int, console: Console
) -> Iterator[FileResult]:
    """One result per file, in order, each as soon as it is known (so that --json gives it at once and Ctrl-C in a
    folder of hour-long recordings keeps the answers already found), with a progress bar through each."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        for path in audio:
            line = _FileProgress(bar, path.name)
            line.begin("identifying")
            result = _identify_one(bundle, path, chunk, top, line.seconds, line.begin)
            line.end()
            if result.warning:
                warning(console, f"{result.warning}; identified from what is there")
            yield result


def _identify_one(
    bundle: ModelBundle,
    path: Path,
    chunk: float,
    top: int,
    report: Callable[[float, float | None], None],
    phase: Callable[[str], None],
) -> FileResult:
    """A file's result; a file that cannot be decoded (or a folder without audio) is a result with its error, so
    that the others are still identified."""
    from spkidd.audio.decode import AudioDecodeError
    from spkidd.identify import FileResult, identify_file

    if path.is_dir():
        return FileResult(str(path), "", 0.0, 0.0, {}, 0.0, error="a folder without audio files")
    try:
        return identify_file(bundle, path, chunk, top, report, phase, report)
    except AudioDecodeError as exc:
        return FileResult(str(path), "", 0.0, 0.0, {}, 0.0, error=str(exc))


def _draw_timelines(results: list[FileResult], folder: Path, chunk_s: float, console: Console) -> None:
    """A picture of each recording that has a timeline; said on stderr, so that --json's output stays JSON."""
    from functools import partial

    from spkidd.timeline_picture import draw_timeline, picture_name

    taken: set[str] = set()
    pictures = [(r, folder / picture_name(Path(r.path), taken)) for r in results if r.timeline]
    for result, picture in pictures:
        _write_report(partial(draw_timeline, result, picture), folder, console)
        console.print(f"timeline of {result.path}: {picture}", markup=False)
    if not pictures:
        longer = f"{1.5 * chunk_s:g} s (1.5 times --chunk)"
        console.print(f"no timeline to draw: a recording gets one when it holds speech and is longer than {longer}")


def _print_identified(results: list[FileResult]) -> None:
    """A table of every file's answer, then the timeline of each long one."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from spkidd.events import as_percent
    from spkidd.turns import amount_of_speech, clock

    out = Console()
    table = Table()
    for column in ("file", "speaker", "confidence", "candidates"):
        table.add_column(column)
    for r in results:
        candidates = ", ".join(f"{s} {as_percent(p)}" for s, p in r.top_k.items())
        if r.by_timeline:
            candidates = f"share of speech: {candidates}"
        answer = f"[red]{escape(r.error)}" if r.error else escape(r.speaker)
        table.add_row(escape(r.path), answer, "" if r.error else as_percent(r.confidence), escape(candidates))
    out.print(table)
    for r in results:
        if r.timeline:
            out.print(f"[bold]{escape(r.path)}[/bold] timeline:")
            for turn in r.timeline:
                span = f"{clock(turn['start']):>9} - {clock(turn['end']):<9}"
                out.print(f"  {span}  {escape(turn['speaker'])} ({as_percent(turn['confidence'])})")
            spoke = ", ".join(f"{speaker} {amount_of_speech(seconds)}" for speaker, seconds in r.speakers.items())
            out.print(f"  who spoke: {escape(spoke)}")


@app.command()
def listen(
    model: Path = typer.Argument(..., help="Model file."),
    source: str = typer.Option("mic", "--source", "-s", help="mic, mic:NAME, mic:INDEX, a stream URL or a file."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per identification event and line."),
    fast: bool = typer.Option(False, "--fast", help="Replay a file as fast as possible (audio-time stamps)."),
    name: str = typer.Option("listen", help="Source name in events and utterance ids."),
    min_score: float | None = typer.Option(None, help="Override the model's cosine threshold for a name."),
    top: int = typer.Option(3, help="How many candidates events carry."),
    keep_unknown: Path | None = typer.Option(
        None, help="Keep the audio of utterances answered unknown in this folder (to enroll from later)."
    ),
) -> None:
    """Who is speaking, live: a terminal view (or JSON lines) from the daemon's own streaming pipeline."""
    import asyncio

    from rich.console import Console

    from spkidd.audio.sources import SourceSpecError
    from spkidd.listen import SourceFailedError
    from spkidd.listen import listen as run_listen
    from spkidd.modelfile import ModelFileError, load_model
    from spkidd.pipeline import PipelineSettings
    from spkidd.unknown_clips import UnknownClipSettings

    console = Console(stderr=True, soft_wrap=True)
    _one_torch_thread()
    try:
        bundle = load_model(model)
        overrides: dict[str, float] = {"top_k": float(top)}
        if min_score is not None:
            overrides["min_score"] = min_score
        settings = PipelineSettings(decision=overrides, unknown_clips=UnknownClipSettings(folder=keep_unknown))
        asyncio.run(run_listen(bundle, source, settings, name=name, realtime=not fast, json_lines=json_output))
    except (ModelFileError, SourceSpecError, ValueError) as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None
    except SourceFailedError as exc:
        error(console, str(exc))
        raise typer.Exit(1) from None


@app.command()
def run(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config file (default: ./config.toml, then /etc/spkidd/config.toml)."
    ),
) -> None:
    """The daemon: every configured source -> speaker identification -> MQTT (Home Assistant discovery).
    SIGTERM/SIGINT stop it cleanly, SIGHUP reloads the config and the model."""
    import asyncio
    import signal
    import threading

    # A SIGHUP while the daemon is still importing would kill it (the default action): remember it instead, and
    # the daemon reloads once it is ready.
    early_hangup = threading.Event()
    signal.signal(signal.SIGHUP, lambda _sig, _frame: early_hangup.set())

    from spkidd.config import ConfigError, find_config, load_config
    from spkidd.daemon import root_level, run_daemon

    try:
        settings = load_config(find_config(config))
    except ConfigError as exc:
        typer.echo(f"spkidd run: {exc}", err=True)
        raise typer.Exit(2) from None
    command_line_level = logging.DEBUG if ctx.find_root().params.get("verbose") else None
    logging.getLogger().setLevel(root_level(settings.logging.level, command_line_level))
    _one_torch_thread()
    raise typer.Exit(asyncio.run(run_daemon(settings, early_hangup, command_line_level)))


@app.command()
def enroll(
    model: Path = typer.Argument(..., help="Model file."),
    audio: list[Path] = typer.Argument(..., help="Clips of the speaker (about 10-30 s of speech in all)."),
    speaker: str = typer.Option(..., "--speaker", "-s", help="Name of the speaker to add or update."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of updating MODEL in place."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Add the clips to an existing speaker even if they sound more like another one, or enroll a new name "
        "for clips that sound like a known speaker's voice.",
    ),
) -> None:
    """Add or update a speaker from a few clips, in seconds, without retraining. A running daemon on this model
    file uses the change within seconds."""
    import time

    from rich.console import Console

    from spkidd.audio.decode import AudioDecodeError
    from spkidd.enrollment import DifferentVoiceError
    from spkidd.enrollment import enroll as enroll_speaker
    from spkidd.modelfile import ModelFileError, check_writable, load_model, save_model

    console = Console(stderr=True, soft_wrap=True)
    started = time.monotonic()
    _one_torch_thread()
    target = out or model
    try:
        check_writable(target)
        bundle, report = enroll_speaker(load_model(model), speaker, audio, force)
        save_model(bundle, target)
    except (ModelFileError, AudioDecodeError, ValueError) as exc:
        hint = " (--force)" if isinstance(exc, DifferentVoiceError) else ""
        error(console, f"{exc}{hint}")
        raise typer.Exit(2) from None
    for said in report.warnings:
        warning(console, said)
    action = "updated" if report.updated else "enrolled"
    typer.echo(
        f"{action} {speaker}: {report.speech_s:.1f} s of speech from {report.clips} clip(s) "
        f"in {time.monotonic() - started:.1f} s -> {target}"
    )


@app.command()
def speakers(model: Path = typer.Argument(..., help="Model file.")) -> None:
    """List the speakers a model knows, with how much speech each was trained or enrolled on."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from spkidd.modelfile import ModelFileError, load_model

    try:
        bundle = load_model(model)
    except ModelFileError as exc:
        error(Console(stderr=True, soft_wrap=True), str(exc))
        raise typer.Exit(2) from None
    table = Table(title=f"{model.name}: {len(bundle.labels)} speakers")
    for column in ("speaker", "from", "speech (s)", "updated"):
        table.add_column(column)
    for label in bundle.labels:
        info = bundle.enrollment.get(label, {})
        table.add_row(
            escape(label),
            str(info.get("source", "training")),
            f"{info.get('seconds', 0):.1f}",
            str(info.get("updated", "")),
        )
    Console().print(table)


@app.command()
def forget(
    model: Path = typer.Argument(..., help="Model file."),
    speaker: str = typer.Argument(..., help="Speaker to remove."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of updating MODEL in place."),
) -> None:
    """Remove a speaker from a model."""
    from rich.console import Console

    from spkidd.enrollment import forget as forget_speaker
    from spkidd.modelfile import ModelFileError, check_writable, load_model, save_model

    target = out or model
    try:
        check_writable(target)
        save_model(forget_speaker(load_model(model), speaker), target)
    except (ModelFileError, ValueError) as exc:
        error(Console(stderr=True, soft_wrap=True), str(exc))
        raise typer.Exit(2) from None
    typer.echo(f"forgot {speaker} -> {target}")


@app.command()
def devices() -> None:
    """List the audio input devices a microphone can record from (a source's `device` in config.toml, or
    `--source mic:NAME` / `mic:INDEX` for `spkidd listen`); * marks the default."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from spkidd.audio.microphone import list_input_devices

    try:
        found = list_input_devices()
    except OSError as exc:
        typer.echo(f"spkidd devices: cannot query PortAudio: {exc}", err=True)
        raise typer.Exit(1) from None
    if not found:
        typer.echo("no audio input devices found")
        return
    table = Table(title="audio input devices")
    table.add_column("index", justify="right")
    table.add_column("name")
    table.add_column("channels", justify="right")
    table.add_column("rate (Hz)", justify="right")
    table.add_column("default", justify="center")
    for device in found:
        table.add_row(
            str(device.index),
            escape(device.name),
            str(device.channels),
            f"{device.default_rate:g}",
            "*" if device.is_default else "",
        )
    Console().print(table)
