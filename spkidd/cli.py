"""The `spkidd` command line. Heavy modules are imported inside each command so `spkidd --help` is instant."""

from __future__ import annotations

import logging

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
