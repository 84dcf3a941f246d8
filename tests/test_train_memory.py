"""The training process hands large freed blocks back to the system at once (train.memory)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import numpy as np
from train.memory import return_large_blocks

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

if sys.argv[1] == "set":
    assert return_large_blocks()
np.ones(2 << 20, dtype=np.uint8)  # freed at once: without the setting glibc now keeps blocks of 2 MB
large, small = [], []
for _ in range(64):
    large.append(np.ones(2 << 20, dtype=np.uint8))
    small.append(np.ones(64 << 10, dtype=np.uint8))  # still in use, between the large blocks
before = rss_mb()
large.clear()
print(before - rss_mb())
"""


def _freed_mb(setting: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    return float(done.stdout)


def test_large_blocks_go_back_when_freed_among_blocks_still_in_use() -> None:
    """128 MB of 2-MB blocks freed between small blocks still in use: given back with the setting, kept without."""
    assert _freed_mb("set") > 120
    assert _freed_mb("unset") < 30
