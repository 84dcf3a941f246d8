"""The kept `unknown` clips on a disk that fills up during months of running: every clip that cannot be written is
one OSError for the pipeline to log, with no traceback on stderr (the journal) and no half clip left behind.

A full disk without root: the child process may write files of at most FSIZE bytes (RLIMIT_FSIZE, SIGXFSZ
ignored), so a write beyond that fails as one on a full disk does (EFBIG instead of ENOSPC)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.daemon import REPO

FSIZE = 20_000
"""Room for a sidecar, not for a WAV of 1.5 s (48 kB)."""

CHILD = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from spkidd.events import Identification
from spkidd.unknown_clips import UnknownClipSettings, save_unknown_clip

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))
settings = UnknownClipSettings(folder=Path(sys.argv[1]))
audio = (np.random.default_rng(0).standard_normal(24000) * 3000).astype(np.int16)
for i in range(3):
    event = Identification("room", f"room-00000{{i}}", "identified", "unknown", 0.3, {{}}, True, 0.0, 1.5, 1.5)
    try:
        save_unknown_clip(settings, audio, event)
        print("kept")
    except OSError as exc:
        print("refused:", exc.strerror)
"""


def test_a_disk_without_room_refuses_each_clip_in_one_line_and_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "unknown"
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(fsize=FSIZE), str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["refused: File too large"] * 3
    assert child.stderr == ""
    assert sorted(p.name for p in folder.iterdir()) == []
