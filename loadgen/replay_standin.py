"""A minimal server speaking the agent's HTTP surface, for the generator benchmark and tests.

Why it exists: the generator-capacity benchmark needs a *trivial* function whose cost is close to
zero (so the numbers measure Locust, not the models), and the replay's own tests need something
to replay against before/besides the real agent. It is NOT the agent: one process, an LRU cache
of real TFLite interpreters under a byte cap (``BRULEE_STANDIN_MODELS`` dir with catalog.json,
``BRULEE_STANDIN_CAP`` bytes), plus a ``trivial`` function that loads nothing.

Run: ``gunicorn -w 1 -k gthread --threads 8 'loadgen.replay_standin:make_app()'``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from flask import Flask, Response, request


def make_app(models_dir: str | None = None, cap_bytes: int | None = None) -> Flask:
    models_dir = models_dir or os.environ.get("BRULEE_STANDIN_MODELS") or None
    cap = int(cap_bytes or os.environ.get("BRULEE_STANDIN_CAP", 1 << 40))
    catalog = {}
    if models_dir:
        for rec in json.loads((Path(models_dir) / "catalog.json").read_text())["models"]:
            catalog[rec["name"]] = rec
    app = Flask("brulee-standin")
    lock = threading.Lock()
    loaded: OrderedDict[str, tuple[object, int]] = OrderedDict()
    counts = {"hits": 0, "misses": 0, "evictions": 0}

    def describe() -> list[dict]:
        out = [
            {
                "name": "trivial",
                "model": "trivial",
                "handler": "tensor",
                "input_shape": [1, 1],
                "dtype": "float32",
                "state": "ready",
                "loaded_bytes": 1,
            }
        ]
        for name, rec in catalog.items():
            out.append(
                {
                    "name": name,
                    "model": name,
                    "handler": "tensor",
                    "input_shape": rec["input_shape"],
                    "dtype": rec["input_dtype"],
                    "state": "ready",
                    "loaded_bytes": rec["file_bytes"],
                }
            )
        return out

    @app.get("/system/functions")
    def functions() -> Response:
        return Response(json.dumps(describe()), mimetype="application/json")

    @app.get("/system/cache")
    def cache() -> Response:
        with lock:
            used = sum(size for _, size in loaded.values())
            doc = {
                "policy": "lru",
                "workers": 1,
                "devices": [
                    {
                        "device": "cpu",
                        "used_bytes": used,
                        "cap_bytes": cap,
                        **counts,
                        "loaded": list(loaded),
                    }
                ],
            }
        return Response(json.dumps(doc), mimetype="application/json")

    @app.post("/function/<name>")
    def invoke(name: str) -> Response:
        import numpy as np

        if name != "trivial" and name not in catalog:
            return Response(f"no function {name}\n", status=404)
        payload = request.get_json(force=True)
        started = time.perf_counter()
        load_s = 0.0
        hit = True
        if name == "trivial":
            result = payload["inputs"]
        else:
            with lock:  # one interpreter at a time: this stand-in is a single "worker"
                if name in loaded:
                    loaded.move_to_end(name)
                    counts["hits"] += 1
                else:
                    hit = False
                    counts["misses"] += 1
                    from tflite_runtime.interpreter import Interpreter

                    rec = catalog[name]
                    size = rec["file_bytes"]
                    while loaded and sum(s for _, s in loaded.values()) + size > cap:
                        loaded.popitem(last=False)
                        counts["evictions"] += 1
                    t = time.perf_counter()
                    interp = Interpreter(model_path=str(Path(models_dir) / rec["file"]))
                    interp.allocate_tensors()
                    load_s = time.perf_counter() - t
                    loaded[name] = (interp, size)
                interp = loaded[name][0]
                t = time.perf_counter()
                inp = interp.get_input_details()[0]
                interp.set_tensor(inp["index"], np.asarray(payload["inputs"], dtype=inp["dtype"]))
                interp.invoke()
                result = interp.get_tensor(interp.get_output_details()[0]["index"]).tolist()
                exec_s = time.perf_counter() - t
        total = time.perf_counter() - started
        resp = Response(json.dumps({"outputs": result}), mimetype="application/json")
        resp.headers["X-Cache"] = "hit" if hit else "miss"
        resp.headers["X-Load-Seconds"] = f"{load_s:.6f}"
        resp.headers["X-Exec-Seconds"] = f"{(total - load_s) if name == 'trivial' else exec_s:.6f}"
        resp.headers["X-Queue-Seconds"] = "0"
        resp.headers["X-Worker"] = "standin-0"
        return resp

    return app
