"""The simplest one-file model server, the baseline of ``benchmarks/footprint.py``: Flask under
gunicorn, interpreters kept in a dict (no cap, no eviction, no queue).

    MODELS=DIR gunicorn -w 1 -k gthread --threads 8 'benchmarks.simple_server:app'

``POST /function/NAME`` with a ``.npy`` body runs ``DIR/NAME.tflite`` (loaded on its first call)
and answers the output as JSON.
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


@app.post("/function/<name>")
def invoke(name: str):
    with lock:  # an interpreter serves one thread at a time
        if name not in models:
            models[name] = load_model(os.path.join(os.environ["MODELS"], f"{name}.tflite"))
        output = models[name].predict(np.load(io.BytesIO(request.get_data())))
    return jsonify(output=output.tolist())
