"""The agent's processes forked from ``brulee up`` after it imported their runtime once.

A worker or a gateway started as a new interpreter loads Python, redis-py, RQ, NumPy, the
TFLite runtime, Flask… again: about 40 MiB of private memory each. Forked from one parent that
imported them already (:func:`preload`), they share those pages copy-on-write and pay only
for what they change. :class:`Forked` offers the part of ``subprocess.Popen`` the supervisor
uses, so a forked slot is supervised (reaped, restarted, stopped) like any other process.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
import time
import traceback
from array import array
from collections.abc import Callable
from importlib import import_module

# what the workers and the gateway import; the parent imports it once, before any fork
RUNTIME = ("agent.worker", "agent.gateway", "gunicorn.app.wsgiapp", "gunicorn.workers.gthread")
_LIBRARY_PAGES = array("Q")  # what the children map in again (:func:`fault_in`)


def preload() -> None:
    """Import the children's runtime into this process and freeze what exists: the garbage
    collector then never walks (and so never writes to) the pages the children share."""
    global _LIBRARY_PAGES
    for module in RUNTIME:
        import_module(module)
    _LIBRARY_PAGES = library_pages()
    gc.collect()
    gc.freeze()


def set_title(title: str) -> None:
    """Rewrite this process's command line in place (``ps``, ``/proc/PID/cmdline``): a forked
    child says what it is rather than showing its parent's arguments."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5))
    data = title.encode()[: end - start - 1]
    ctypes.memset(start, 0, end - start)
    ctypes.memmove(start, data, len(data))


def library_pages() -> array:
    """Addresses of the pages of shared libraries that this process has mapped in memory (its
    page table's *present* bit, ``/proc/self/pagemap``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    found = array("Q")
    with open("/proc/self/maps") as fh:
        maps = [line.split() for line in fh]
    with open("/proc/self/pagemap", "rb") as pagemap:
        for fields in maps:
            if len(fields) < 6 or fields[1][0] != "r" or ".so" not in fields[5].rsplit("/")[-1]:
                continue  # libraries only (not the models' files, not anonymous memory)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // page * 8)
            entries = array("Q", pagemap.read((end - start) // page * 8))
            found.extend(start + i * page for i, e in enumerate(entries) if e >> 63)
    return found


def fault_in(pages: array) -> None:
    """Map ``pages`` (the parent's library pages, :func:`library_pages`) into this forked
    process. fork does not copy the page-table entries of file mappings, so a child's resident
    size would creep up as it first runs code its parent ran already: pages that cost nothing
    (the parent holds them), but would count against its models, measured from its baseline
    RSS. Touching them uses no memory."""
    for address in pages:
        ctypes.c_ubyte.from_address(address).value  # noqa: B018 (the read is the point)


class Forked:
    """``target()`` in a forked child, titled ``title``, with ``env`` as its environment; the
    exit code is ``target``'s ``SystemExit`` code (0 when it returns, 1 when it raises)."""

    def __init__(self, target: Callable[[], object], title: str, env: dict[str, str]) -> None:
        self.returncode: int | None = None
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            os._exit(self._child(target, title, env))

    @staticmethod
    def _child(target: Callable[[], object], title: str, env: dict[str, str]) -> int:
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)  # not the supervisor's handlers
            set_title(title)
            fault_in(_LIBRARY_PAGES)
            os.environ.clear()
            os.environ.update(env)
            target()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 (the child ends here, whatever it was)
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return code

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_gateway(argv: list[str]) -> None:
    """gunicorn's own ``main``, in this process (``argv``: its options and the app)."""
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["gunicorn", *argv]
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog="gunicorn").run()
