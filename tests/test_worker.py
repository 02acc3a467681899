"""The worker's interpreter cache: dropping an interpreter really gives its memory back."""

from __future__ import annotations

from pathlib import Path

from agent.interpreters import InterpreterCache
from agent.memory import rss_bytes


def test_drop_returns_resident_memory(test_models: Path):
    cache = InterpreterCache(test_models)
    before = rss_bytes()
    loaded, load_s = cache.load("mobilenetv2-mini", "mobilenetv2-mini.tflite")
    import numpy as np

    loaded.predict(np.zeros(loaded.input.shape, dtype=loaded.input.dtype))  # touch the arena
    grown = rss_bytes() - before
    assert load_s > 0 and grown > 0
    freed = cache.drop("mobilenetv2-mini")
    assert "mobilenetv2-mini" not in cache.models
    assert freed >= 0.5 * grown, f"loading grew RSS by {grown} bytes, dropping freed {freed}"
    assert cache.drop("mobilenetv2-mini") == 0  # dropping twice is harmless
