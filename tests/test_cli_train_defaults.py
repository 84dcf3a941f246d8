"""`spkidd train`'s options repeat TrainSettings' defaults (the CLI may not import train/ until the command runs):
they must stay the same, or the CLI and the library would train different models."""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from spkidd.cli import app
from train.fit import TrainSettings
from train.fit_head import HEADS

RENAMED = {"window": "window_s", "lr": "learning_rate"}


def _train_command() -> Any:
    return typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]


def test_every_train_option_defaults_to_the_library_default() -> None:
    command = _train_command()
    fields = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    compared = 0
    for param in command.params:
        name = RENAMED.get(param.name, param.name)
        if name in fields:
            assert param.default == fields[name], f"--{param.name}: CLI {param.default!r}, library {fields[name]!r}"
            compared += 1
    assert compared >= 20


def test_the_heads_help_states_the_number_training_uses() -> None:
    """--heads defaults to None (chosen with --tune-top), so its help text says the number: it must be HEADS."""
    (heads,) = [param for param in _train_command().params if param.name == "heads"]
    assert f"default {HEADS};" in (heads.help or "")


def test_every_train_option_is_an_input_or_a_setting() -> None:
    """The command hands its options to TrainSettings by name: one that is neither would be refused there."""
    from spkidd.cli import _train_settings

    options = {param.name: param.default for param in _train_command().params if param.name}
    assert TrainSettings(**_train_settings(options)) == TrainSettings()


GE2E_ONLY = {"windows", "window_frames", "head_hidden", "pools", "heads", "tune_top", "denoise"}
"""Read by train.fit_head.HeadTrainer (and the model it builds) alone."""
SCRATCH_ONLY = {"optimizer", "cell", "hidden", "layers", "dropout", "features"}
"""Read by train.fit.Trainer alone: the ge2e heads always use AdamW, their own dropout and the encoder's features."""


def test_each_option_says_which_encoder_it_applies_to() -> None:
    """--encoder's help says an option beginning with `ge2e:` or `none:` applies to that encoder only."""
    for param in _train_command().params:
        help_text = param.help or ""
        if param.name in GE2E_ONLY:
            assert help_text.startswith("ge2e:"), f"--{param.name}: {help_text}"
        elif param.name in SCRATCH_ONLY:
            assert help_text.startswith("none:"), f"--{param.name}: {help_text}"
        else:
            assert not help_text.startswith(("ge2e:", "none:")), f"--{param.name} applies to both: {help_text}"
