"""Messages for a person at a terminal, printed as they are: rich would take `[a-z]` in a regular expression or a
speaker called `[b]Nina` for markup and swallow it."""

from __future__ import annotations

from rich.console import Console


def error(console: Console, message: str) -> None:
    console.print(f"error: {message}", style="red", markup=False, highlight=False)


def warning(console: Console, message: str) -> None:
    console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)
