"""Resident and proportional memory of a process, and handing freed memory back to the system."""

from __future__ import annotations

import ctypes
import gc
import logging
import os

_PAGE = os.sysconf("SC_PAGE_SIZE")
COLD_LOADS_ENV = "BRULEE_COLD_LOADS"  # `brulee up --cold-loads` sets it for its workers


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (this one by default), from ``/proc``."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def pss_bytes(pid: int | str = "self") -> int:
    """Proportional set size of a process: its private pages, and each page it shares with n
    processes (the agent's, forked from one parent) as 1/n. Reads the page tables: ~1 ms."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))


def release_memory(collect: bool = False) -> None:
    """Trim the heap: glibc keeps freed arenas unless asked to return them, so without this an
    evicted interpreter would still count against the device.

    ``collect``: run the garbage collector first (for a clean baseline). Not on evictions: an
    interpreter has no reference cycles and is freed as soon as it is dropped, and a full
    collection in a worker costs 35-50 ms on this machine, most of a ResNet50 eviction."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        pass


log = logging.getLogger("brulee.worker")


def forget_cached_file(path: str | os.PathLike) -> None:
    """Ask the OS to drop ``path``'s pages from its page cache (``POSIX_FADV_DONTNEED``), as a
    device whose memory is full would lose them: the next load of the file reads from storage.
    Pages still mapped (another worker's copy of the model) stay; a file gone is no error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        log.warning("cold loads: cannot open %s to drop its cached pages: %s", path, exc)
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
