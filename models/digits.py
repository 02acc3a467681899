"""scikit-learn's bundled handwritten digits (no download), split the same way everywhere."""

from __future__ import annotations

import numpy as np

HELD_OUT = 0.2
SPLIT_SEED = 0


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``; images are float32 (N, 8, 8, 1) grey levels 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[..., None] / 16.0
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELD_OUT, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test


def held_out_accuracy(model) -> float:
    """Share of the held-out digits that ``model`` (an ``agent.runtime.LoadedModel`` taking one
    digit per call) classifies right, through the TFLite interpreter."""
    _, _, x_test, y_test = load_split()
    predicted = [int(np.argmax(model.predict(x[None]))) for x in x_test]
    return float(np.mean(np.array(predicted) == y_test))
