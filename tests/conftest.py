"""Shared fixtures. Imports stay lazy: the interpreter smoke tests also run in a second
environment that has ai-edge-litert and nothing heavy (no TensorFlow, Flask or Redis client)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def test_models() -> Path:
    """The ``test`` model set, built by the project's own builder (once; later runs reuse it).

    ``BRULEE_TEST_MODELS`` chooses the directory (the README's test command sets it, so the
    ai-edge-litert run uses the models the first run built).
    """
    from models.build import build, plan
    from models.zoo import resolve

    out = Path(os.environ.get("BRULEE_TEST_MODELS") or REPO / ".cache" / "test-models")
    for _ in build(plan(resolve("test")), out, progress=False, jobs=2):
        pass
    return out


@pytest.fixture(scope="session")
def test_catalog(test_models: Path) -> dict:
    from models.catalog import load_catalog

    return load_catalog(test_models)


@pytest.fixture(scope="session")
def dtype_models(test_models: Path) -> Path:
    """The digits model in every storage dtype the builder makes (float32, float16, dynamic-range
    int8, full-integer int8), in a directory beside the test set (built once, reused)."""
    from models.build import DTYPES, build, plan
    from models.zoo import resolve

    out = test_models.parent / f"{test_models.name}-dtypes"
    specs = plan(resolve(names=["digits-cnn"]), dtypes=DTYPES)
    for _ in build(specs, out, progress=False, jobs=2):
        pass
    return out
