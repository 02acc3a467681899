"""The gateway end to end: real redis-server, real `brulee worker` processes, real HTTP (werkzeug
serving the Flask app), real TFLite models from the test set."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.agent_fixtures import running_agent

pytestmark = pytest.mark.timeout(120)
CAP = 64 * 1024 * 1024
TOKEN = "test-token"


@pytest.fixture(scope="module")
def models_dir(test_models: Path, tmp_path_factory) -> Path:
    """The test models plus a corrupt one and one whose file is missing (fault cases)."""
    out = tmp_path_factory.mktemp("models")
    for item in test_models.iterdir():
        shutil.copy(item, out / item.name)
    catalog = json.loads((out / "catalog.json").read_text())
    base = next(m for m in catalog["models"] if m["name"] == "digits-cnn")
    (out / "corrupt.tflite").write_bytes(b"not a flatbuffer" * 100)
    catalog["models"].append({**base, "name": "corrupt", "file": "corrupt.tflite"})
    catalog["models"].append({**base, "name": "missing", "file": "missing.tflite"})
    (out / "catalog.json").write_text(json.dumps(catalog))
    return out


@pytest.fixture(scope="module")
def agent(models_dir: Path):
    # the callback tests post to a server of the test on loopback: allowed here only
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRULEE_CALLBACK_ALLOW", "127.0.0.1")
        with running_agent(models_dir, CAP, workers=1, token=TOKEN) as info:
            yield info


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def digits_input() -> np.ndarray:
    return np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)


def post_json(agent: dict, name: str, array, path: str = "function") -> requests.Response:
    return requests.post(
        f"{agent['url']}/{path}/{name}", json={"inputs": np.asarray(array).tolist()}, timeout=60
    )


def test_miss_then_hit_with_headers_and_in_process_equality(agent, models_dir):
    from agent.runtime import load_model

    x = digits_input()
    first = post_json(agent, "digits-cnn", x)
    assert first.status_code == 200, first.text
    second = post_json(agent, "digits-cnn", x)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    for header in ("X-Load-Seconds", "X-Exec-Seconds", "X-Queue-Seconds", "X-Worker"):
        assert header in second.headers
    assert float(first.headers["X-Load-Seconds"]) > 0
    model = load_model(models_dir / "digits-cnn.tflite")
    expected = model.predict(x)
    got = np.asarray(second.json()["outputs"], dtype=np.float32)
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["shared", "unusable", "not shared"])
def test_inputs_travel_inline_unless_the_workers_share_the_spool(
    models_dir, monkeypatch, tmp_path, case
):
    """Workers that do not see the gateway's spool (another host, a container, a private
    /dev) or no usable spool at all: the tensor goes through Redis. The answers are the same
    either way, and the spool reuses its slot from one call to the next."""
    from agent.lane import Spool
    from agent.runtime import load_model

    workers_root, gateway_root = tmp_path / "workers", tmp_path / "gateway"
    workers_root.mkdir()
    gateway_root.mkdir()
    if case == "unusable":
        workers_root = gateway_root = tmp_path / "missing"
    elif case == "shared":
        gateway_root = workers_root
    monkeypatch.setenv("BRULEE_SPOOL_DIR", str(workers_root))
    x = digits_input()
    expected = load_model(models_dir / "digits-cnn.tflite").predict(x)
    with running_agent(models_dir, CAP, workers=1, token=TOKEN, spool_dir=gateway_root) as info:
        for _ in range(3):
            resp = post_json(info, "digits-cnn", x)
            assert resp.status_code == 200, resp.text
        got = np.asarray(resp.json()["outputs"], dtype=np.float32)
        slots = list(Spool(gateway_root).dir.glob("*.npy")) if case != "unusable" else []
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
    assert len(slots) == (1 if case == "shared" else 0)


def test_unknown_function_is_404(agent):
    resp = post_json(agent, "nope", [[1]])
    assert resp.status_code == 404 and "nope" in resp.json()["error"]


def test_wrong_shape_and_content_type_are_400(agent):
    resp = post_json(agent, "digits-cnn", np.zeros((1, 3, 3, 1)))
    assert resp.status_code == 400 and "shape" in resp.json()["error"]
    resp = requests.post(
        f"{agent['url']}/function/digits-cnn",
        data=b"hello",
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert resp.status_code == 400 and "content type" in resp.json()["error"].lower()


def test_body_over_limit_is_413(agent):
    resp = requests.post(
        f"{agent['url']}/function/digits-cnn",
        data=b"0" * (17 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 413 and "limit" in resp.json()["error"]


def test_body_shorter_than_its_content_length_is_400(agent):
    """The gateway reads a body in one read of the server's stream (not Werkzeug's 8 KiB
    steps): a client that stops early is told so, and a large body arrives whole."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(agent["url"])
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            b"POST /function/digits-cnn HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 400") and b"body ended after 2 of its 100 bytes" in answer
    big = {"inputs": [[[[0.5]] * 8] * 8] * 300}  # 300 images, ~100 KiB of JSON: wrong shape
    resp = requests.post(f"{agent['url']}/function/digits-cnn", json=big, timeout=30)
    assert resp.status_code == 400 and "[300, 8, 8, 1]" in resp.json()["error"]


def test_failed_models_answer_503_while_others_serve(agent):
    missing = post_json(agent, "missing", digits_input())
    assert missing.status_code == 503 and "does not exist" in missing.json()["error"]
    corrupt = post_json(agent, "corrupt", digits_input())
    assert corrupt.status_code == 503, corrupt.text
    listed = requests.get(f"{agent['url']}/system/functions", headers=auth(), timeout=10).json()
    states = {f["name"]: f for f in listed["functions"]}
    assert states["corrupt"]["state"] == "failed" and states["corrupt"]["reason"]
    assert states["missing"]["state"] == "failed"
    assert post_json(agent, "digits-cnn", digits_input()).status_code == 200


def test_model_larger_than_cap_is_507(agent):
    import redis

    from agent.keys import key

    conn = redis.Redis.from_url(agent["redis_url"])
    conn.hset(key("stats", "tiny-cnn"), "bytes", CAP * 2)  # observed size beyond the cap
    try:
        image = io.BytesIO()
        Image.new("RGB", (32, 32), (120, 30, 200)).save(image, format="PNG")
        resp = requests.post(
            f"{agent['url']}/function/tiny-cnn",
            data=image.getvalue(),
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert resp.status_code == 507
        assert str(CAP) in resp.json()["error"]
    finally:
        conn.hdel(key("stats", "tiny-cnn"), "bytes")


def test_management_needs_token_and_deploys_at_run_time(agent):
    url = f"{agent['url']}/system/functions"
    assert requests.get(url, timeout=10).status_code == 401
    assert (
        requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    )
    for model in ("digits-cnn", "tiny-cnn"):
        resp = requests.post(
            url,
            json={"name": "digits2", "model": model, "handler": "tensor"},
            headers=auth(),
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        if model == "digits-cnn":
            assert post_json(agent, "digits2", digits_input()).status_code == 200
    # redeployed onto another model: the gateway's copy of the registry is refreshed at once
    moved = post_json(agent, "digits2", digits_input())
    assert moved.status_code == 400 and "shape" in moved.json()["error"], moved.text
    resp = requests.delete(url, json={"functionName": "digits2"}, headers=auth(), timeout=10)
    assert resp.status_code == 200
    assert post_json(agent, "digits2", digits_input()).status_code == 404


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"name": "x", "model": "digits-cnn", "file": "../../etc/passwd"}, "inside the model"),
        ({"name": "x", "model": "digits-cnn", "handler": "nonsense"}, "nonsense"),
        ({"name": "x", "model": "no-such-model"}, "no-such-model"),
        ({"name": "../x", "model": "digits-cnn"}, "function name"),
        ({"name": "x", "model": "digits-cnn", "memory": "lots"}, "lots"),
        ({"name": "x", "model": "digits-cnn", "colour": "red"}, "colour"),
    ],
)
def test_bad_deploy_is_400_and_changes_nothing(agent, body, named):
    url = f"{agent['url']}/system/functions"
    resp = requests.post(url, json=body, headers=auth(), timeout=10)
    assert resp.status_code == 400, resp.text
    assert named in resp.json()["error"]
    listed = requests.get(url, headers=auth(), timeout=10).json()["functions"]
    assert "x" not in {f["name"] for f in listed}
    assert post_json(agent, "digits-cnn", digits_input()).status_code == 200


def test_async_job_and_callback(agent):
    resp = post_json(agent, "digits-cnn", digits_input(), path="async-function")
    assert resp.status_code == 202
    location = resp.headers["Location"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = requests.get(f"{agent['url']}{location}", timeout=10).json()
        if doc["status"] in ("finished", "failed"):
            break
        time.sleep(0.05)
    assert doc["status"] == "finished", doc
    assert len(doc["result"]["outputs"][0]) == 10
    assert requests.get(f"{agent['url']}/jobs/nope", timeout=10).status_code == 404


def test_cache_metrics_health_openapi(agent):
    post_json(agent, "digits-cnn", digits_input())
    cache = requests.get(f"{agent['url']}/system/cache", headers=auth(), timeout=10).json()
    device = cache["devices"]["dev"]
    assert device["cap_bytes"] == CAP and device["used_bytes"] <= CAP
    assert requests.get(f"{agent['url']}/healthz", timeout=10).json()["workers"] == 1
    metrics = requests.get(f"{agent['url']}/metrics", timeout=10).text
    assert 'brulee_invocations_total{cache="hit",function="digits-cnn"}' in metrics
    assert "brulee_exec_seconds_bucket" in metrics
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(metrics)
        for s in fam.samples
    }
    assert samples[("brulee_cache_cap_bytes", (("device", "dev"),))] == CAP
    assert 0 < samples[("brulee_cache_used_bytes", (("device", "dev"),))] <= CAP
    doc = requests.get(f"{agent['url']}/openapi.json", timeout=10).json()
    from openapi_spec_validator import validate

    validate(doc)
    rules = {
        "/function/{name}",
        "/async-function/{name}",
        "/jobs/{id}",
        "/system/functions",
        "/system/cache",
        "/system/status",
        "/status",
        "/healthz",
        "/metrics",
        "/openapi.json",
    }
    assert set(doc["paths"]) == rules


def test_openapi_declares_required_fields_statuses_and_links(agent):
    doc = requests.get(f"{agent['url']}/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    assert schemas["DeployRequest"]["required"] == ["name", "model"]
    assert "digits-cnn" in schemas["DeployRequest"]["properties"]["model"]["enum"]
    assert schemas["RemoveRequest"]["required"] == ["functionName"]
    paths = doc["paths"]
    for path in ("/function/{name}", "/async-function/{name}"):
        post = paths[path]["post"]
        assert {"400", "404", "413", "429", "500", "503", "507"} <= set(post["responses"])
        assert post["responses"]["429"]["headers"]["Retry-After"]["required"] is True
        assert "Retry-After" in post["responses"]["503"]["headers"]
        deadline = next(p for p in post["parameters"] if p["name"] == "X-Deadline-Ms")
        assert deadline["in"] == "header" and deadline["schema"]["minimum"] == 1
    deploy_links = paths["/system/functions"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in deploy_links.values()} == {
        "invokeFunction",
        "invokeFunctionAsync",
        "removeFunction",
    }
    job_link = paths["/async-function/{name}"]["post"]["responses"]["202"]["links"]["GetJob"]
    assert job_link == {"operationId": "getJob", "parameters": {"id": "$response.body#/id"}}
    assert paths["/system/cache"]["get"]["security"] == [{"bearer": []}]
    assert paths["/system/status"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/status"]["get"]  # the page holds no data
    assert "security" not in paths["/healthz"]["get"]


def test_redis_down_is_503_and_recovers(agent):
    server = agent["server"]
    server.stop()
    try:
        resp = post_json(agent, "digits-cnn", digits_input())
        assert resp.status_code == 503 and "Redis" in resp.json()["error"]
        assert requests.get(f"{agent['url']}/healthz", timeout=10).status_code == 503
    finally:
        server.start()
    from tests.agent_fixtures import wait_for_workers

    wait_for_workers(agent["redis_url"], 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        resp = post_json(agent, "digits-cnn", digits_input())
        if resp.status_code == 200:
            break
        time.sleep(0.2)
    assert resp.status_code == 200, resp.text


def test_async_callback_is_posted(agent):
    from tests.agent_fixtures import callback_receiver, wait_for

    with callback_receiver() as (port, received):
        resp = requests.post(
            f"{agent['url']}/async-function/digits-cnn",
            json={"inputs": digits_input().tolist()},
            headers={"X-Callback-Url": f"http://127.0.0.1:{port}/done"},
            timeout=30,
        )
        assert resp.status_code == 202
        assert wait_for(received), "callback URL was never called"
        assert resp.json()["id"].encode() in received[0]


def test_concurrent_cold_requests_never_exceed_cap(models_dir: Path, tmp_path_factory):
    """Ten copies of the digits model, two workers, a cap for about three of them: concurrent
    cold requests evict, but /system/cache never shows more than the cap."""
    from concurrent.futures import ThreadPoolExecutor

    catalog = json.loads((models_dir / "catalog.json").read_text())
    base = next(m for m in catalog["models"] if m["name"] == "digits-cnn")
    out = tmp_path_factory.mktemp("copies")
    copies = []
    for i in range(10):
        shutil.copy(models_dir / base["file"], out / f"d{i}.tflite")
        copies.append({**base, "name": f"d{i}", "file": f"d{i}.tflite"})
    (out / "catalog.json").write_text(json.dumps({**catalog, "models": copies}))
    cap = 3 * 2 * base["file_bytes"]  # the gateway's first estimate is twice the file size
    with running_agent(out, cap, workers=2, token=TOKEN) as small:
        peaks: list[int] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                snap = requests.get(
                    f"{small['url']}/system/cache", headers=auth(), timeout=10
                ).json()
                peaks.extend(d["used_bytes"] for d in snap["devices"].values())

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(10) as pool:
                answers = list(
                    pool.map(lambda i: post_json(small, f"d{i}", digits_input()), range(10))
                )
        finally:
            done.set()
            watcher.join()
        codes = [a.status_code for a in answers]
        # misses that find the memory held by executing or loading models wait for it
        assert codes == [200] * 10, [a.text for a in answers]
        assert peaks and max(peaks) <= cap
        snap = requests.get(f"{small['url']}/system/cache", headers=auth(), timeout=10).json()
        assert sum(d["evictions"].get("cremebrulee", 0) for d in snap["devices"].values()) > 0


def test_killed_worker_fails_sync_calls_and_keeps_async_jobs_waiting(agent):
    """Runs last in this module: it kills the module's worker. A synchronous call ends at its
    deadline; an accepted async job waits (queued) for a worker to be placed on."""
    import signal

    worker = agent["workers"][0]
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    queued = post_json(agent, "digits-cnn", digits_input(), path="async-function")
    started = time.monotonic()
    # queued on the dead worker, never started: it waits to be placed again; with no other
    # worker (and no supervisor to restart one) its deadline ends the wait
    resp = requests.post(f"{agent['url']}/function/digits-cnn",
                         json={"inputs": digits_input().tolist()},
                         headers={"X-Deadline-Ms": "6000"}, timeout=60)  # fmt: skip
    assert resp.status_code == 503 and "died" in resp.json()["error"], resp.text
    assert time.monotonic() - started < 15
    if queued.status_code == 202:  # (placed before placement noticed the death)
        doc = requests.get(f"{agent['url']}{queued.headers['Location']}", timeout=10).json()
        assert doc["status"] == "queued" and doc["attempts"] == 0, doc
    # the dead worker's models are released from the accounting
    snap = requests.get(f"{agent['url']}/system/cache", headers=auth(), timeout=10).json()
    assert snap["devices"] == {}
    resp = post_json(agent, "digits-cnn", digits_input())
    assert resp.status_code == 503 and "no worker" in resp.json()["error"]


def test_prewarm_loads_a_model_before_its_next_request(models_dir: Path):
    """The proactive path end to end with a real worker: a model unloaded by keep-alive is
    loaded again by ``warming`` (into free memory), and its next request is a hit."""
    import redis

    from agent.keepalive import expire_idle, prewarm
    from agent.keys import key
    from agent.placement import Placement
    from agent.policies.proactive import make_proactive
    from agent.registry import Profiles, model_facts
    from agent.snapshot import snapshot

    with running_agent(models_dir, CAP, workers=1, token=TOKEN) as agent:
        assert post_json(agent, "digits-cnn", digits_input()).headers["X-Cache"] == "miss"
        conn = redis.Redis.from_url(agent["redis_url"])
        cache = Placement(conn)
        assert expire_idle(cache, make_proactive("ttl", ttl_s=1.0), now=time.time() + 5)
        deadline = time.monotonic() + 30
        while snapshot(cache)["devices"]["dev"]["releasing"] and time.monotonic() < deadline:
            time.sleep(0.05)
        # the worker measured the model: RSS growth at load, and what dropping it gave back
        listed = requests.get(f"{agent['url']}/system/functions", headers=auth(), timeout=10)
        digits = next(f for f in listed.json()["functions"] if f["name"] == "digits-cnn")
        assert digits["observed_bytes"] > 0 and "freed_bytes" in digits
        doc = json.loads(conn.hget(key("functions"), "digits-cnn"))
        facts, _ = model_facts(conn, doc, models_dir, Profiles(models_dir).get("digits-cnn"))
        placed = prewarm(cache, make_proactive("warming"), {"digits-cnn": facts},
                               {"digits-cnn": doc["file"]})  # fmt: skip
        assert [m for m, _ in placed] == ["digits-cnn"]
        while time.monotonic() < deadline:
            held = [
                m
                for w in snapshot(cache)["devices"]["dev"]["workers"].values()
                for m in w["models"]
                if m["model"] == "digits-cnn" and m["state"] == "ready"
            ]
            if held:
                break
            time.sleep(0.05)
        assert held, "the prewarm job never made digits-cnn ready"
        again = post_json(agent, "digits-cnn", digits_input())
        assert again.status_code == 200 and again.headers["X-Cache"] == "hit"


def test_keep_alive_loop_feeds_arrivals_and_prewarms(models_dir: Path):
    """`brulee up --keep-alive warming`'s loop: it reads every arrival from Redis into the
    policy and, once keep-alive has unloaded a model, loads it back into free memory."""
    import threading

    import redis

    from agent.keepalive import expire_idle
    from agent.placement import Placement
    from agent.policies.proactive import make_proactive
    from agent.policies.proactive.warming import Warming
    from agent.snapshot import snapshot
    from agent.up import keep_alive_loop

    class Recording(Warming):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def on_invocation(self, name: str, now: float) -> None:
            super().on_invocation(name, now)
            self.seen.append(name)

    policy = Recording()
    with running_agent(models_dir, CAP, workers=1, token=TOKEN) as agent:
        stop = threading.Event()
        loop = threading.Thread(
            target=keep_alive_loop,
            args=(agent["redis_url"], policy, stop, models_dir, 0.2),
            daemon=True,
        )
        loop.start()
        try:
            time.sleep(0.5)  # the loop starts reading at the newest arrival
            for _ in range(2):
                assert post_json(agent, "digits-cnn", digits_input()).status_code == 200
            cache = Placement(redis.Redis.from_url(agent["redis_url"]))
            assert expire_idle(cache, make_proactive("ttl", ttl_s=1.0), now=time.time() + 5)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                device = snapshot(cache)["devices"]["dev"]
                if device.get("prewarms", {}).get("digits-cnn") and not device["releasing"]:
                    break
                time.sleep(0.1)
            assert device["prewarms"]["digits-cnn"] >= 1
            assert policy.seen[:2] == ["digits-cnn", "digits-cnn"]
            while time.monotonic() < deadline:
                states = [m["state"] for w in device["workers"].values() for m in w["models"]]
                if states == ["ready"]:
                    break
                time.sleep(0.1)
                device = snapshot(cache)["devices"]["dev"]
            again = post_json(agent, "digits-cnn", digits_input())
            assert again.headers["X-Cache"] == "hit"
        finally:
            stop.set()
            loop.join(5)
