"""The simplest one-file model server, the baseline of ``benchmarks/footprint.py`` and
``benchmarks/agent_overhead.py``: Flask under gunicorn, interpreters kept in a dict (no cap, no
eviction, no queue, no Redis) — what a user would write in one file instead of brulee.

    MODELS=DIR gunicorn -w 1 -k gthread --threads 8 'benchmarks.simple_server:app'

``POST /function/NAME`` runs ``DIR/NAME.tflite`` (loaded on its first call) on the body: a
``.npy`` array, JSON ``{"inputs": [...]}``, or a JPEG/PNG image (resized to the model's input,
scaled to [-1, 1]); it answers ``{"outputs": [...]}`` as JSON.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
from flask import Flask, jsonify, request

from agent.runtime import load_model

app = Flask("simple")
models: dict = {}
lock = threading.Lock()


def _input(model) -> np.ndarray:
    body, kind = request.get_data(), request.mimetype
    if kind == "application/json":
        return np.asarray(request.get_json()["inputs"], dtype=model.input.dtype)
    if kind.startswith("image/"):
        from PIL import Image

        _, height, width, _ = model.input.shape
        img = Image.open(io.BytesIO(body)).convert("RGB").resize((width, height))
        return (np.asarray(img, dtype=np.float32) / 127.5 - 1.0)[None, ...]
    return np.load(io.BytesIO(body))


@app.post("/function/<name>")
def invoke(name: str):
    with lock:  # an interpreter serves one thread at a time
        if name not in models:
            models[name] = load_model(os.path.join(os.environ["MODELS"], f"{name}.tflite"))
        model = models[name]
        output = model.predict(_input(model))
    return jsonify(outputs=output.tolist())
