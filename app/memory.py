"""Keeping freed memory in the process, so that each request's large buffers are not fresh pages.

glibc hands an allocation of more than 128 KiB (its default ``M_MMAP_THRESHOLD``, raised on the fly
only up to a point and per arena) to its own ``mmap`` and gives it back with ``munmap`` when freed.
A gateway decoding a 1024 px upload, or a worker reading one, allocates a few such buffers per job,
and every one is then faulted in and zeroed page by page: on the shared VMs measured here a page
fault costs several microseconds, and a 1024 px SyCE job spent about 15 ms of its POST in them
(``bench/bench_pipeline.py``). Raising the thresholds keeps freed blocks in the heap for the next
job; two arenas bound what the thread pool's threads keep apart. Pillow's own image blocks are kept
by ``Image.core.set_blocks_max`` (``app.cli``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("xai")

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# A 4000 x 4000 float32 image is 64 MiB: every buffer of an upload within XAI_MAX_PIXELS' default stays in the heap.
MMAP_THRESHOLD = 64 << 20
# The heap is given back to the system only when this much is free at its top.
TRIM_THRESHOLD = 256 << 20
ARENAS = 2


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for this process (see the module docstring); False where it is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("not glibc: large buffers are left to the C library's default allocator")
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENAS))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
