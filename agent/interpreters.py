"""The TFLite interpreters one worker process holds, by model name: load (inside the model
directory only), drop (giving the memory back to the system, and with ``cold_loads`` the file's
pages in the OS page cache too) and the runtime's one-time warm-up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from agent.memory import COLD_LOADS_ENV, forget_cached_file, release_memory, rss_bytes
from agent.runtime import LoadedModel, load_model
from agent.staged import open_staged
from functions.stack import model_path


class InterpreterCache:
    """The interpreters this process holds, by model name."""

    def __init__(
        self, models_dir: str | os.PathLike, threads: int = 1, cold_loads: bool | None = None
    ) -> None:
        """``cold_loads``: a dropped model's file leaves the page cache too, so its next load
        reads from storage, as on a memory-starved device (None: ``$BRULEE_COLD_LOADS``, which
        ``brulee up --cold-loads`` sets for its workers)."""
        self.models_dir = Path(models_dir)
        self.threads = threads
        if cold_loads is None:
            cold_loads = os.environ.get(COLD_LOADS_ENV, "") not in ("", "0")
        self.cold_loads = cold_loads
        self.models: dict[str, LoadedModel] = {}

    def load(self, model: str, file: str) -> tuple[LoadedModel, float]:
        """Load ``file`` (inside the model directory) and return it with the seconds taken."""
        t0 = time.perf_counter()
        loaded = open_staged(self.models_dir, model, file, self.threads) or load_model(
            model_path(self.models_dir, file), num_threads=self.threads
        )
        self.models[model] = loaded
        return loaded, time.perf_counter() - t0

    def warm_runtime(self) -> None:
        """Load, run and drop the smallest model once, so the runtime's one-time set-up (its
        libraries, the XNNPACK delegate: about 3 MB) is part of the worker's fixed baseline and
        not charged to the first model this worker loads."""
        files = sorted(self.models_dir.glob("*.tflite"), key=lambda p: p.stat().st_size)
        for path in files:
            try:
                loaded = load_model(path, num_threads=self.threads)
            except (ValueError, RuntimeError, OSError):
                continue  # a corrupt file: try the next one
            loaded.predict(np.zeros(loaded.input.shape, dtype=loaded.input.dtype))
            loaded.close()
            del loaded
            release_memory(collect=True)
            return

    def drop(self, model: str) -> int:
        """Drop ``model``'s interpreter and give its memory back; returns the bytes freed."""
        loaded = self.models.pop(model, None)
        if loaded is None:
            return 0
        before = rss_bytes()
        path = loaded.path
        loaded.close()  # unmaps the file: its pages are no longer pinned by this process
        del loaded
        release_memory()
        freed = before - rss_bytes()
        if self.cold_loads:
            forget_cached_file(path)
        return freed
