"""Resident memory of this process, and handing freed memory back to the system."""

from __future__ import annotations

import ctypes
import gc
import os

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (this one by default), from ``/proc``."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def release_memory() -> None:
    """Collect garbage and trim the heap: glibc keeps freed arenas unless asked to return them,
    so without this an evicted interpreter would still count against the device."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        pass
