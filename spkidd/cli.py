"""The `spkidd` command line. Heavy modules are imported inside each command so `spkidd --help` is instant."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from spkidd import __version__

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
    app()


@app.command()
def listen(
    model: Path = typer.Argument(..., help="Model file."),
    source: str = typer.Option("mic", "--source", "-s", help="mic, mic:NAME, mic:INDEX, a stream URL or a file."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per identification event and line."),
    fast: bool = typer.Option(False, "--fast", help="Replay a file as fast as possible (audio-time stamps)."),
    name: str = typer.Option("listen", help="Source name in events and utterance ids."),
    min_score: float | None = typer.Option(None, help="Override the model's cosine threshold for a name."),
    top: int = typer.Option(3, help="How many candidates events carry."),
) -> None:
    """Who is speaking, live: a terminal view (or JSON lines) from the daemon's own streaming pipeline."""
    import asyncio

    import torch
    from rich.console import Console

    from spkidd.audio.sources import SourceSpecError
    from spkidd.listen import listen as run_listen
    from spkidd.modelfile import ModelFileError, load_model
    from spkidd.pipeline import PipelineSettings

    console = Console(stderr=True)
    torch.set_num_threads(1)
    try:
        bundle = load_model(model)
        overrides: dict[str, float] = {"top_k": float(top)}
        if min_score is not None:
            overrides["min_score"] = min_score
        settings = PipelineSettings(decision=overrides)
        asyncio.run(run_listen(bundle, source, settings, name=name, realtime=not fast, json_lines=json_output))
    except (ModelFileError, SourceSpecError, ValueError) as exc:
        console.print(f"[red]error: {exc}")
        raise typer.Exit(2) from None
