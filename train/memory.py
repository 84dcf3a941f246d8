"""Large freed blocks go back to the system at once in the training process (glibc only; elsewhere nothing is done).

glibc raises its mmap threshold to the largest block freed so far (up to 32 MB) and keeps blocks under it in its heap
for later allocations, and training frees large blocks of many sizes: the features and encoder outputs of each batch
encoded, each validation batch, each training batch's activations. Kept in the heap they added some 200 MB to P2's
training (peak while encoding 985 MB, while training 1088 MB; with the threshold held at 1 MB 753 and 878 MB), and
the epochs took no longer.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number (malloc.h); setting it also stops glibc from moving the threshold."""
LARGE_BLOCK = 1 << 20


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Blocks of `threshold` bytes or more are mapped on their own and unmapped when freed. True when glibc took it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
