"""Writing a file so that readers see the old file or the new one, never half of one.

Model files, training checkpoints and cached audio are all replaced this way; one implementation keeps the rule
that an interrupted write (Ctrl-C, a full disk) leaves neither a half file nor a stray temporary behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path in `path`'s folder (a rename never crosses file systems); when the block ends
    normally the temporary replaces `path`, when it raises anything, KeyboardInterrupt included, it is removed."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.resolve().parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
