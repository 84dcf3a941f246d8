"""`spkidd train`: from a dataset on disk to a model file, with progress and a summary a person can read."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spkidd import SAMPLE_RATE
from spkidd.audio_cache import AudioCache, Prepared, default_cache_dir, prepare, skipped_note
from spkidd.dataset import DataError, Row, audio_files, discover_and_tell, speaker_counts
from spkidd.enrollment import check_name
from spkidd.modelfile import ModelBundle, check_writable
from spkidd.progress import progress_bar
from spkidd.terminal import error, warning
from train.calibrate import DEFAULT_THRESHOLD, strangers_note, too_few_impostors
from train.fit import Split, Trainer, TrainSettings, stratified_split
from train.fit_head import HeadTrainer
from train.head_parallel import WorkerFailed
from train.trainer_base import (
    HELD_OUT,
    EpochRecord,
    TrainerBase,
    TrainingInterrupted,
    TrainResult,
    checkpoint_of,
)

log = logging.getLogger(__name__)

MIN_CLIPS_WARNING = 3
MIN_SECONDS_WARNING = 5.0
UNCALIBRATED = (
    f"the unknown-speaker threshold is not calibrated: the default ({DEFAULT_THRESHOLD:.3f}) is used, and a stranger "
    "may be named as one of the household"
)
MORE_AUDIO = (
    "Give every speaker 4 or more recordings, or more than 4 s of speech in recordings of 2 s or more, and train again"
)


@dataclass
class TrainInputs:
    data: Path
    out: Path
    label_pattern: str | None = None
    val_data: Path | None = None
    noise_dir: Path | None = None
    cache_dir: Path | None = None
    resume: bool = False


def decode_rows(rows: list[Row], cache: AudioCache, console: Console, what: str) -> Prepared:
    with progress_bar(console) as progress:
        task = progress.add_task(f"decoding {what}", total=len(rows), status="")
        prepared = prepare(rows, cache, on_progress=lambda n: progress.advance(task, n))
    if prepared.skipped:
        warning(console, skipped_note([row.said(reason) for row, reason in prepared.skipped], rows))
    return prepared


@dataclass(frozen=True)
class SpeakerAudio:
    """One speaker's share of the usable training audio."""

    name: str
    files: int
    seconds: float

    @property
    def scant(self) -> bool:
        return self.files < MIN_CLIPS_WARNING and self.seconds < MIN_SECONDS_WARNING


SHOWN_SPEAKERS = 20
"""The speakers table lists a household whole; of a larger set, the speakers with the least audio."""
NAMED_SCANT = 3
"""Up to this many speakers with too little audio are warned about one by one; more are one warning."""


def speaker_audio(prepared: Prepared) -> list[SpeakerAudio]:
    """Each speaker's files and seconds of sound, by name."""
    counts = speaker_counts(prepared.rows)
    seconds: dict[str, float] = {}
    for row, audio in zip(prepared.rows, prepared.audio, strict=True):
        seconds[row.speaker] = seconds.get(row.speaker, 0.0) + len(audio) / SAMPLE_RATE
    return [SpeakerAudio(name, counts[name], seconds[name]) for name in sorted(counts)]


def _print_speakers(speakers: list[SpeakerAudio], console: Console) -> None:
    """Who the model will know, with how much audio each: a folder named wrongly, or a --label-pattern that cuts
    the wrong part of a file name, shows here before training, not in the model's labels after it."""
    shown = sorted(speakers, key=lambda s: s.seconds)[:SHOWN_SPEAKERS] if len(speakers) > SHOWN_SPEAKERS else speakers
    whole = shown is speakers
    console.print(
        f"{len(speakers)} speakers:" if whole else f"the {len(shown)} of {len(speakers)} speakers with the least audio:"
    )
    table = Table()
    for column in ("speaker", "files", "seconds of sound"):
        table.add_column(column, justify="left" if column == "speaker" else "right")
    for speaker in shown:
        table.add_row(escape(speaker.name), str(speaker.files), f"{speaker.seconds:.1f}")
    console.print(table)


def _warn_small_speakers(speakers: list[SpeakerAudio], label_pattern: str | None, console: Console) -> None:
    """Speakers with too little audio to be recognised well; many of them are one warning, and a flat folder whose
    every file became a speaker of its own points at --label-pattern."""
    scant = [s for s in speakers if s.scant]
    if len(scant) <= NAMED_SCANT:
        for s in scant:
            warning(
                console,
                f"speaker {s.name!r} has only {s.files} clip(s), {s.seconds:.1f} s of sound; "
                "expect it to be recognised poorly",
            )
        return
    names = ", ".join(repr(s.name) for s in scant[:5]) + (", ..." if len(scant) > 5 else "")
    message = (
        f"{len(scant)} of {len(speakers)} speakers have fewer than {MIN_CLIPS_WARNING} clips and under "
        f"{MIN_SECONDS_WARNING:g} s of sound each ({names}); expect them to be recognised poorly"
    )
    if label_pattern and all(s.files == 1 for s in speakers):
        message += (
            f". Every file became a speaker of its own: does --label-pattern '{label_pattern}' capture only the "
            "speaker's part of the file names in (?P<speaker>...)?"
        )
    warning(console, message)


def check_speakers(speakers: list[str], data: Path) -> None:
    """Refuses a one-speaker dataset before anything is decoded or trained: the references are centred on the
    household's mean voice, which for a lone voice is that voice itself (trained on three 3-s LibriSpeech clips,
    its own unheard speech scored -0.02 and 0.25 against its reference, 11 strangers up to 0.08), and the scratch
    network's classifier has nothing to tell apart (its loss is 0 from the first step)."""
    if len(speakers) == 1:
        raise ValueError(
            f"{data}: only one speaker ({speakers[0]!r}); a model needs recordings of at least two speakers to tell "
            "voices apart and to calibrate its unknown-speaker threshold. Add recordings of a second person "
            "(anyone: a visitor, a relative on the phone) and train again"
        )


def _warn_unvalidated(split: Split, labels: list[str], console: Console, val_data: Path | None) -> None:
    """Before training (so that a person can stop and add recordings): the speakers without validation audio (too
    little to hold any out, or none in `val_data`), whose voices the unknown threshold is then calibrated without,
    or not calibrated at all."""
    held_out = set(split.val_labels)
    missing = [label for i, label in enumerate(labels) if i not in held_out]
    if not missing:
        return
    advice = MORE_AUDIO if val_data is None else f"Add their recordings to {val_data}, and train again"
    if len(missing) == len(labels):
        warning(console, f"no validation audio; {UNCALIBRATED}. {advice}")
        return
    warning(
        console,
        f"no validation audio of {', '.join(repr(m) for m in missing)}; the unknown-speaker "
        f"threshold is calibrated without their voice(s). {advice}",
    )


def check_noise_dir(noise_dir: Path | None) -> None:
    """A mistyped --noise-dir would otherwise train without the user's noise, unnoticed (a missing folder holds no
    files); refused before anything is decoded."""
    if noise_dir is not None and not noise_dir.is_dir():
        what = "not a folder" if noise_dir.exists() else "no such folder"
        raise DataError(f"--noise-dir {noise_dir}: {what}")


def _noise_clips(noise_dir: Path | None, cache: AudioCache, console: Console) -> list[np.ndarray]:
    if noise_dir is None:
        return []
    rows = [Row(path=p, speaker="noise") for p in audio_files(noise_dir)]
    clips = decode_rows(rows, cache, console, "noise clips").audio
    if not clips:
        warning(
            console,
            f"no usable audio in --noise-dir {noise_dir} ({len(rows)} audio file(s)); only generated noise is mixed in",
        )
    return clips


def run_training(inputs: TrainInputs, settings: TrainSettings, console: Console | None = None) -> int:
    """Returns the process exit code: 0 written, 130 interrupted (checkpoint kept). Ctrl-C while the audio is
    decoded or encoded, before any epoch, says so too instead of ending without a word."""
    console = console or Console(stderr=True, soft_wrap=True)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    quiet = distributed and dist.get_rank() != 0
    if quiet:
        console = Console(quiet=True)
    try:
        code = _train(inputs, settings, console, quiet)
    except (TrainingInterrupted, KeyboardInterrupt):
        error(console, f"interrupted: no model written; {_kept(checkpoint_of(inputs.out))}")
        return 130
    if distributed:
        dist.destroy_process_group()
    return code


def _train(inputs: TrainInputs, settings: TrainSettings, console: Console, quiet: bool) -> int:
    """The data checked and decoded, the model trained, written and summed up: 0, or the exit code of a run that
    did not write one."""
    check_writable(inputs.out)
    check_noise_dir(inputs.noise_dir)
    _warn_unused_noise(inputs, settings, console)
    _warn_starting_over(inputs, console)
    rows = discover_and_tell(inputs.data, inputs.label_pattern, console)
    check_speakers(sorted({r.speaker for r in rows}), inputs.data)
    cache = AudioCache(inputs.cache_dir or default_cache_dir())
    prepared, labels = _training_audio(rows, inputs, cache, console)
    split = _split(inputs, settings, prepared, labels, cache, console)
    summary = _summary(inputs, prepared, labels, split, console)
    _warn_unvalidated(split, labels, console, inputs.val_data)
    trainer_class: type[TrainerBase] = HeadTrainer if settings.encoder == "ge2e" else Trainer
    noise = _noise_clips(inputs.noise_dir, cache, console)
    trainer = trainer_class(settings, labels, split, inputs.out, summary, noise)
    if inputs.resume:
        trainer.check_resumable()
    console.print(trainer.plan_text(trainer.resolved()))
    outcome = _fit(trainer, inputs.resume, bool(split.val_audio), console)
    if isinstance(outcome, int):
        return outcome
    trainer.finish(outcome)
    if not quiet:
        _print_summary(console, outcome.bundle, inputs.out)
    return 0


def _warn_unused_noise(inputs: TrainInputs, settings: TrainSettings, console: Console) -> None:
    """The user's noise goes into augmentation, and for the pretrained encoder into the noisy half of validation
    too; the scratch network without augmentation has no use for it, which it would otherwise ignore unsaid."""
    if inputs.noise_dir is not None and not settings.augment and settings.encoder != "ge2e":
        unused = f"--noise-dir {inputs.noise_dir} is not used: --no-augment with --encoder none mixes in no noise"
        warning(console, unused)


def _warn_starting_over(inputs: TrainInputs, console: Console) -> None:
    """A run without --resume replaces the checkpoint of an interrupted one at its first epoch: said while there is
    time to stop and add --resume, as a forgotten flag otherwise lost the interrupted run's epochs unnoticed."""
    checkpoint = checkpoint_of(inputs.out)
    if not inputs.resume and checkpoint.is_file():
        warning(
            console,
            f"{checkpoint} holds an interrupted run; this one starts over and replaces it after its first epoch "
            "(stop now with Ctrl-C and add --resume to go on from it)",
        )


def _training_audio(
    rows: list[Row], inputs: TrainInputs, cache: AudioCache, console: Console
) -> tuple[Prepared, list[str]]:
    """The training data decoded, and its speakers' names (the labels), sorted, shown with their audio; a set left
    with one speaker once the others' files turned out unusable is refused."""
    prepared = decode_rows(rows, cache, console, "training audio")
    if not prepared.audio:
        raise ValueError(f"{inputs.data}: no usable audio ({len(prepared.skipped)} files skipped)")
    speakers = speaker_audio(prepared)
    _print_speakers(speakers, console)
    _warn_small_speakers(speakers, inputs.label_pattern, console)
    labels = [s.name for s in speakers]
    check_speakers(labels, inputs.data)
    for label in labels:
        check_name(label)
    return prepared, labels


def _split(
    inputs: TrainInputs,
    settings: TrainSettings,
    prepared: Prepared,
    labels: list[str],
    cache: AudioCache,
    console: Console,
) -> Split:
    """Training and validation audio: --val-data as given (of known speakers only), otherwise a stratified split."""
    index = {label: i for i, label in enumerate(labels)}
    train_labels = [index[r.speaker] for r in prepared.rows]
    if inputs.val_data is None:
        rng = np.random.default_rng(settings.seed)
        return stratified_split(prepared.audio, train_labels, settings.val_fraction, rng)
    val_rows = discover_and_tell(inputs.val_data, inputs.label_pattern, console)
    val = decode_rows(val_rows, cache, console, "validation audio")
    unknown = sorted({r.speaker for r in val.rows} - set(labels))
    if unknown:
        raise ValueError(f"{inputs.val_data}: speakers not in the training data: {', '.join(unknown[:5])}")
    return Split(prepared.audio, train_labels, val.audio, [index[r.speaker] for r in val.rows])


def _summary(
    inputs: TrainInputs, prepared: Prepared, labels: list[str], split: Split, console: Console
) -> dict[str, Any]:
    """What the model file records of its data, also told to the user before training starts."""
    summary: dict[str, Any] = {
        "source": str(inputs.data),
        "files": len(prepared.rows),
        "skipped": len(prepared.skipped),
        "speakers": len(labels),
        "seconds": round(prepared.seconds, 1),
        "train_items": len(split.train_audio),
        "val_items": len(split.val_audio),
    }
    console.print(
        f"{_recordings(prepared.rows)}, {summary['seconds'] / 60:.1f} min of sound, {len(labels)} speakers; "
        f"{summary['skipped']} skipped; validation: {len(split.val_audio)} item(s)"
    )
    return summary


def _recordings(rows: list[Row]) -> str:
    """The rows counted as files, or as pieces of fewer files when a manifest cuts long recordings (its four
    pieces of one recording were '4 files')."""
    files = len({row.path for row in rows})
    return f"{len(rows)} files" if files == len(rows) else f"{len(rows)} pieces of {files} file(s)"


def _fit(trainer: TrainerBase, resume: bool, validated: bool, console: Console) -> TrainResult | int:
    """The training run with a progress bar and a line per epoch; the exit code instead of a result when a head
    worker died (1), the checkpoint kept."""
    with progress_bar(console) as progress:
        task = progress.add_task(trainer.progress_label, total=None, status="")

        def on_progress(kind: str, n: int) -> None:
            if kind == "start":
                progress.reset(task, total=n)
            else:
                progress.advance(task, n)

        checked = "val" if validated else "train audio"

        def on_epoch(r: EpochRecord) -> None:
            status = f"epoch {r.epoch} loss {r.loss:.3f} train {r.train_acc:.3f} {checked} {r.val_acc:.3f}"
            progress.update(task, status=status)
            progress.console.print(f"  {status} ({r.seconds:.1f} s)")

        trainer.progress = on_progress
        try:
            return trainer.run(resume=resume, on_epoch=on_epoch)
        except WorkerFailed as failure:
            error(console, f"{failure}; no model written; {_kept(trainer.checkpoint_path)}")
            return 1


def _kept(checkpoint: Path) -> str:
    if checkpoint.is_file():
        return f"the last finished epoch is in {checkpoint} (continue with --resume)"
    return "no epoch had finished"


def _print_summary(console: Console, bundle: ModelBundle, out: Path) -> None:
    training = bundle.training
    cal = training["calibration"]
    table = Table(title=f"model written: {out}", show_header=False)
    table.add_row(*_accuracy_row(training))
    table.add_row("epochs run", str(training["epochs_run"]))
    table.add_row("training time", f"{training['wall_s']:.0f} s")
    table.add_row("unknown-speaker threshold", _threshold_text(bundle.decision["min_score"], cal))
    if "min_speech_s" in bundle.decision:
        table.add_row(
            "first name after",
            f"{bundle.decision['min_speech_s']:.1f} s of speech: a wrong first name for "
            f"{cal['val_wrong_first']:.1%} of {training['data']['val_items']} validation clips",
        )
    if cal.get("val_answers"):
        table.add_row("held-out clips, final answers", _answers_text(cal["val_answers"], training["data"]["val_items"]))
    table.add_row("training curve", str(out.with_name(out.stem + ".training.png")))
    console.print(table)
    if cal["val_far"] is None:
        warning(console, f"{UNCALIBRATED}. {MORE_AUDIO}")
    elif cal.get("impostor_scores") is not None and too_few_impostors(cal["impostor_scores"], cal["target_far"]):
        warning(
            console,
            f"the unknown-speaker threshold was calibrated on {cal['impostor_scores']} impostor "
            f"score(s), too few to show a false-accept rate of {cal['target_far']:.0%}, so it is kept at least at the "
            f"default ({DEFAULT_THRESHOLD:.3f}): a stranger may be named, or a voice of the household answered "
            "`unknown`, more often. More or longer recordings per speaker give more scores to calibrate it on.",
        )
    elif (note := strangers_note(bundle.decision["min_score"], cal.get("impostors"))) is not None:
        warning(console, note)


def _accuracy_row(training: dict[str, Any]) -> tuple[str, str]:
    """The best epoch's accuracy, named after what it was measured on: accuracy on the training audio is no
    validation."""
    epoch = training["best_epoch"]
    before = "epoch 0: the pretrained encoder and the speakers' mean voices, before training; no epoch did better"
    when = before if epoch == 0 else f"epoch {epoch}"
    value = f"{training['best_val_acc']:.4f} ({when})"
    if training.get("validated_on", HELD_OUT) == HELD_OUT:
        return "best validation accuracy", value
    return "best accuracy on training audio (nothing held out)", value


def _threshold_text(threshold: float, cal: dict[str, Any]) -> str:
    if cal["val_far"] is None:
        return f"{threshold:.3f}: the default, not calibrated (no held-out audio)"
    return (
        f"{threshold:.3f}: FAR {cal['val_far']:.3f} ({cal['impostors']}), FRR {cal['val_frr']:.3f}: of held-out "
        f"windows scored alone, {cal['val_far']:.0%} of other voices' would pass for a speaker and "
        f"{cal['val_frr']:.0%} of the speakers' own fall short of it"
    )


def _answers_text(answers: dict[str, float], clips: int) -> str:
    """The daemon's final answers on the held-out clips: what the household gets, beside the threshold's rates."""
    return (
        f"named right {answers['named_right']:.1%}, unknown {answers['unknown']:.1%}, named wrong "
        f"{answers['named_wrong']:.1%} of {clips} clips (as the daemon's final answers)"
    )
