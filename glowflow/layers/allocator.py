"""glibc's dynamic allocation thresholds, raised once for the passes with autograd off on the CPU.

Under its default settings glibc's ``malloc`` serves blocks of at least its *mmap threshold* (128 KiB at start) by
fresh ``mmap`` calls, and returns the free top of its heap to the system once it exceeds the *trim threshold*
(twice the mmap threshold). Both thresholds are dynamic: freeing an mmapped block larger than the current mmap
threshold, and at most 32 MiB (on 64-bit systems), raises the mmap threshold to that block's size and the trim
threshold to twice that. A training step frees many such blocks and raises them in its first step; a process that
only scores or samples with glowflow may never free one large enough, and then faults its buffers in afresh at
every pass: config M's evaluation at batch 16 took 32,256 minor page faults and 78 ms a call against none and 38 ms
once raised (AMD EPYC Zen 5, torch 2.13).

:func:`raise_glibc_thresholds` allocates and frees one block just under that 32 MiB limit, once per process: the
thresholds become what any process that has freed a buffer of that size has. It sets nothing: settings made through
``GLIBC_TUNABLES`` or ``mallopt`` switch glibc's dynamic thresholds off, and the block then changes nothing. The cost
is memory: up to twice the block's size of free heap stays with the process instead of going back to the system.
"""

from __future__ import annotations

import platform

import torch

THRESHOLD_BLOCK_BYTES = 30 * 2**20
"""The block :func:`raise_glibc_thresholds` allocates and frees: under glibc's 32 MiB limit for a dynamic mmap
threshold (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit systems) with room for its header and page rounding."""

_raised = False


def raise_glibc_thresholds() -> None:
    """Raise glibc's dynamic mmap and trim thresholds (module docstring) by allocating and freeing one block of
    :data:`THRESHOLD_BLOCK_BYTES`, the first time it is called in a process; later calls, and processes whose C
    library is not glibc, do nothing. :class:`~glowflow.layers.step.FlowSteps` calls it before its first pass with
    autograd off on the CPU. Measured under glibc's defaults in fresh processes that only evaluate or sample (Zen 5,
    two processes each): config M's evaluation at batch 16 77.8 / 77.7 -> 38.0 / 38.6 ms a call, at batch 32 153 /
    158 -> 72.2 / 72.7 ms, its sampling of 16 87.2 / 84.9 -> 41.6 / 42.7 ms (32,256 / 64,512 / 32,256 minor page
    faults a call before, none after); config S's passes, which faulted 0-5,800 pages a call, within the host's
    noise. ``glowflow score glowflow/mnist mnist:test``: 1,374 -> 1,483 images/s, peak RSS 348 -> 358 MiB."""
    global _raised
    if _raised:
        return
    _raised = True
    if uses_glibc():
        torch.empty(THRESHOLD_BLOCK_BYTES, dtype=torch.uint8)  # allocated by mmap, freed at once


def uses_glibc() -> bool:
    """Whether this process runs on Linux with the GNU C library."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
