"""Child processes that never outlive the daemon, however it dies (kill -9, a crash, the OOM killer).

A graceful stop terminates its children itself; a daemon killed outright cannot, and an orphaned embedded
Mosquitto then holds its port so the next `spkidd run` fails, and an ffmpeg listening for a UDP stream that
never comes waits forever. Linux's parent-death signal (prctl PR_SET_PDEATHSIG) has the kernel send SIGTERM
instead. Two rules come with it:
- The signal fires when the *thread* that forked the child ends, not the process: spawn from the event loop's
  thread (asyncio forks in the thread that awaits create_subprocess_exec), which lives as long as the daemon.
- The kernel clears it when the child's credentials change: a child that drops root privileges after it
  started must be spawned as the unprivileged user instead (spkidd.broker does so for mosquitto).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
"""Loaded here, in the daemon: a forked child must not load libraries (another thread may hold the loader lock)."""


def die_with_this_process() -> Callable[[], None]:
    """A `preexec_fn` making the child receive SIGTERM when the calling thread ends (see the module docstring).

    The child also exits at once if this process died before the signal was armed: its parent is then another
    process already, and no signal would ever come.
    """
    parent = os.getpid()

    def arm() -> None:
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)

    return arm
