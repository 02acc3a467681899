"""Measure one model in this (fresh) process; ``models.profile`` runs it once per model.

Run as ``python -m models.probe FILE --runs N --threads T``; prints one JSON object on stdout,
or ``{"error": reason}`` with exit status 1 when the model cannot be loaded or run.

Memory is the process's resident set from ``/proc/self/statm``: what the device really pays
to keep the interpreter ready (file pages it mapped and touched, tensor arena, delegate
buffers), not the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from agent.memory import release_memory, rss_bytes
from agent.runtime import load_model


def drop_page_cache(path: str) -> bool:
    """Ask the kernel to forget ``path``'s cached pages, so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a freshly built file) cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def probe(path: str, runs: int, threads: int, seed: int = 0, digits: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    release_memory(collect=True)
    start = rss_bytes()
    # A worker has served other models before this one: warm the runtime itself (libraries,
    # delegate set-up) with one throw-away load, so the numbers below are this model's own.
    warmup = load_model(path, num_threads=threads)
    warmup.predict(warmup.input.random(rng))
    warmup.close()
    del warmup
    release_memory(collect=True)
    baseline = rss_bytes()

    dropped = drop_page_cache(path)
    t0 = time.perf_counter()
    model = load_model(path, num_threads=threads)
    cold_load = time.perf_counter() - t0
    batch = model.input.random(rng)
    t0 = time.perf_counter()
    model.predict(batch)
    first_invoke = time.perf_counter() - t0
    execs = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict(batch)
        execs.append(time.perf_counter() - t0)
    ready = rss_bytes()

    t0 = time.perf_counter()
    model.close()
    del model
    release_memory()
    unload = time.perf_counter() - t0
    after_unload = rss_bytes()

    # Same file again, now in the page cache: what a reload after eviction costs on a device
    # whose page cache still holds the file.
    t0 = time.perf_counter()
    model = load_model(path, num_threads=threads)
    warm_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.predict(batch)
    warm_first_invoke = time.perf_counter() - t0
    extra = {}
    if digits:  # measured last: it does not touch the numbers above
        from models.digits import held_out_accuracy

        try:
            extra["digits_accuracy"] = held_out_accuracy(model)
        except ModuleNotFoundError:  # a device without scikit-learn has no digits to test on
            pass
    model.close()

    return {
        "page_cache_dropped": dropped,
        "baseline_rss_bytes": baseline,
        "runtime_overhead_bytes": baseline - start,
        "cold_load_s": cold_load,
        "first_invoke_s": first_invoke,
        "exec_s": statistics.median(execs),
        "exec_runs": runs,
        "loaded_bytes": ready - baseline,
        "unload_s": unload,
        "released_bytes": ready - after_unload,
        "warm_load_s": warm_load,
        "warm_first_invoke_s": warm_first_invoke,
        "input_shape": list(model.input.shape),
        "input_dtype": model.input.dtype.name,
        "output_shape": list(model.output.shape),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--digits", action="store_true", help="also measure held-out digits accuracy"
    )
    args = parser.parse_args(argv)
    try:
        result = probe(args.path, args.runs, args.threads, digits=args.digits)
    except (ValueError, RuntimeError, OSError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
