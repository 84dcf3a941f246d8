"""`spkidd train` and `spkidd evaluate` as the benchmarks run them, and the figures the closed-set ones (P1, P2,
P2N) all report."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SPKIDD = [sys.executable, "-m", "spkidd"]


def timed_train(
    manifest: Path, model: Path, options: str = "", launcher: list[str] | None = None, log: Path | None = None
) -> float:
    """Runs `spkidd train MANIFEST --out MODEL OPTIONS` (under `launcher`, e.g. torchrun, if given; its output to
    `log` if given) and returns its wall time: the whole command, imports included, as a user waits for it."""
    command = [*(launcher or SPKIDD), "train", str(manifest), "--out", str(model), *shlex.split(options)]
    started = time.monotonic()
    if log is None:
        subprocess.run(command, check=True)
    else:
        with log.open("w") as handle:
            subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
    return time.monotonic() - started


def evaluate(
    model: Path, manifest: Path, report_dir: Path, quiet: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the command (`quiet`: its tables kept out of the benchmark's output); returns its whole report and the
    shared figures: top-1/5 and what users get at the shipped threshold."""
    command = [*SPKIDD, "evaluate", str(model), str(manifest), "--report", str(report_dir)]
    subprocess.run(command, check=True, capture_output=quiet)
    report = json.loads((report_dir / "report.json").read_text())
    figures = {
        "test_items": report["n"],
        "top1": report["top_k"]["1"],
        "top5": report["top_k"]["5"],
        "named_right": report["at_threshold"]["named_right"],
        "unknown": report["at_threshold"]["unknown"],
        "named_wrong": report["at_threshold"]["named_wrong"],
    }
    return report, figures
