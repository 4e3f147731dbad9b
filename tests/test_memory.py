"""app.memory: after keep_freed_memory, a job's large buffers come back from the heap, not as fresh pages."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# In a fresh interpreter: 20 rounds of a 1024 px upload's buffers (a 4 MiB float image and a 1 MiB copy),
# each allocated, written and freed; prints the minor page faults the rounds after the first took.
ROUNDS = """
import resource, sys
import numpy as np
from app.memory import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def one_round():
    image = np.ones((1024, 1024), np.float32)
    copy = (image * 255).astype(np.uint8)
    return int(copy[-1, -1])
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", ROUNDS, mode], cwd=REPO, capture_output=True, text=True, check=True)
    return int(run.stdout)


def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    pages_per_round = (4 + 1) * 1024 * 1024 // 4096
    assert _faults("default") > 10 * pages_per_round  # glibc's default: mmap'ed and unmapped every round
    assert _faults("tuned") < pages_per_round  # the heap keeps them: at most stray pages
