"""`spkidd evaluate` as the closed-set benchmarks (P1, P2, P2N) run it, and the figures they all report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def evaluate(
    model: Path, manifest: Path, report_dir: Path, quiet: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the command (`quiet`: its tables kept out of the benchmark's output); returns its whole report and the
    shared figures: top-1/5 and what users get at the shipped threshold."""
    command = [sys.executable, "-m", "spkidd", "evaluate", str(model), str(manifest), "--report", str(report_dir)]
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
