"""The copy lifecycle on a real worker: every path out of ``loading`` ends ``ready`` or gives
the reservation back, whatever the request does after the load; work whose caller gave up is
dropped; a paused, forgotten worker drops what the accounting no longer counts; a worker runs
only brulee's own jobs. Real redis-server, real worker processes, real test models."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from agent.dispatch import ASYNC, SYNC, submit, with_facts
from agent.keys import key, worker_queue
from agent.lane import read_reply
from agent.membership import HEARTBEAT_TTL
from agent.placement import ModelFacts, Placement
from agent.registry import Registry
from agent.snapshot import snapshot
from functions.tensors import to_npy
from tests.agent_fixtures import running_agent

pytestmark = pytest.mark.timeout(180)
CAP = 64 * 1024 * 1024
TOKEN = "test-token"


@pytest.fixture(scope="module")
def agent(test_models: Path):
    with running_agent(test_models, CAP, workers=1, token=TOKEN) as info:
        info["conn"] = redis.Redis.from_url(info["redis_url"])
        info["placement"] = Placement(info["conn"])
        info["registry"] = Registry(info["conn"], test_models, None)
        info["registry"].ensure_loaded()
        yield info


def _req(agent: dict, function: str, **extra) -> dict:
    """What the gateway would send for ``function`` (its registry document, placement facts)."""
    doc = agent["registry"].get(function)
    req = {"function": function, "model": doc["model"], "file": doc["file"],
           "handler": doc["handler"], "options": doc.get("options") or {},
           "record": doc.get("record") or {}, "enqueued_at": time.time(), **extra}  # fmt: skip
    return with_facts(req, ModelFacts(doc["model"], 4 << 20, 0.05, 0.01), False)


def _copy(agent: dict, model: str) -> dict | None:
    for worker in snapshot(agent["placement"])["devices"]["dev"]["workers"].values():
        for m in worker["models"]:
            if m["model"] == model:
                return m
    return None


def _evict_all(agent: dict) -> None:
    """Start each case cold: evict every copy and wait until the worker dropped them."""
    conn, placement = agent["conn"], agent["placement"]
    slots = [f.decode() for f in conn.hkeys(key("entries", "dev"))]
    if slots:
        with conn.pipeline() as pipe:
            pipe.multi()
            placement.copies.evict(pipe, "dev", slots, "test")
            pipe.execute()
    deadline = time.monotonic() + 10
    while conn.hlen(key("releasing", "dev")) and time.monotonic() < deadline:
        time.sleep(0.02)


def _sync(agent: dict, req: dict, payload: bytes) -> dict:
    reply = req["reply"]
    submit(agent["placement"], req, payload, SYNC, reply)
    popped = agent["conn"].blpop([reply], timeout=30)
    assert popped is not None, "no answer"
    return read_reply(popped[1])[0]


def _assert_ready_and_unpinned(agent: dict, model: str) -> None:
    copy = _copy(agent, model)
    assert copy is not None and copy["state"] == "ready" and copy["in_flight"] == 0, copy


def test_missing_spool_input_leaves_the_copy_ready(agent):
    _evict_all(agent)
    req = _req(agent, "digits-cnn", reply=key("reply", uuid.uuid4().hex),
               input_file="99999-1.npy", input_bytes=10, host="elsewhere")  # fmt: skip
    head = _sync(agent, req, b"")
    assert head["status"] == 503 and "spool" in head["error"]
    _assert_ready_and_unpinned(agent, "digits-cnn")


def test_interpreter_raising_leaves_the_copy_ready(agent):
    _evict_all(agent)
    wrong = to_npy(np.zeros((1, 3, 3, 1), dtype=np.float32))  # not the model's shape
    head = _sync(agent, _req(agent, "digits-cnn", reply=key("reply", uuid.uuid4().hex)), wrong)
    assert head["status"] == 500 and "the worker failed" in head["error"]
    _assert_ready_and_unpinned(agent, "digits-cnn")


def test_expired_async_input_leaves_the_copy_ready(agent):
    _evict_all(agent)
    job_id = uuid.uuid4().hex
    req = _req(agent, "digits-cnn", input_key=key("input", "never-written"))
    submit(agent["placement"], req, b"", ASYNC, job_id)
    job = Job.fetch(job_id, connection=agent["conn"], serializer=JSONSerializer)
    deadline = time.monotonic() + 30
    while job.get_status(refresh=True) not in ("finished", "failed") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    result = job.return_value()
    assert result["status"] == 504 and "expired" in result["error"]
    _assert_ready_and_unpinned(agent, "digits-cnn")


def test_work_past_its_deadline_is_dropped_and_gives_its_reservation_back(agent):
    _evict_all(agent)
    req = _req(agent, "tiny-cnn", reply=key("reply", uuid.uuid4().hex), deadline=time.time() - 1)
    head = _sync(agent, req, to_npy(np.zeros((1, 32, 32, 3), dtype=np.float32)))
    assert head["status"] == 504 and "deadline" in head["error"]
    assert _copy(agent, "tiny-cnn") is None  # not loaded, nothing reserved
    assert not agent["conn"].hgetall(key("pins", "dev"))


def test_a_worker_runs_only_brulee_jobs(agent):
    (worker,) = agent["placement"].members.workers()[0]
    queue = Queue(worker_queue(worker), connection=agent["conn"], serializer=JSONSerializer)
    job = queue.enqueue_call("os.getcwd")
    deadline = time.monotonic() + 15
    while job.get_status(refresh=True) != "failed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.get_status() == "failed"
    assert "runs only" in job.latest_result().exc_string
    ok = requests.post(f"{agent['url']}/function/digits-cnn",
                       json={"inputs": np.zeros((1, 8, 8, 1)).tolist()}, timeout=30)  # fmt: skip
    assert ok.status_code == 200  # and it keeps serving


def test_a_paused_and_forgotten_worker_drops_what_is_no_longer_counted(test_models: Path):
    """SIGSTOP past the heartbeat: placement forgets the worker and its copies; when it
    resumes, it drops its interpreters and registers again — its resident memory returns to
    its baseline — and serves the next call as a miss."""
    with running_agent(test_models, CAP, workers=1, token=TOKEN) as agent:
        url, proc = agent["url"], agent["workers"][0]
        image = _png(96)
        first = requests.post(f"{url}/function/mobilenetv3small-mini", data=image,
                              headers={"Content-Type": "image/png"}, timeout=30)  # fmt: skip
        assert first.status_code == 200, first.text
        placement = Placement(redis.Redis.from_url(agent["redis_url"]))
        before = snapshot(placement)["devices"]["dev"]
        (held,) = before["workers"].values()
        assert [m["model"] for m in held["models"]] == ["mobilenetv3small-mini"]
        grown = held["rss_bytes"] - held["baseline_rss_bytes"]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(HEARTBEAT_TTL + 1)
            assert placement.members.alive() == {}  # forgotten, with its copies
            assert not placement.r.hlen(key("entries", "dev"))
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        rejoined = None
        while time.monotonic() < deadline:
            devices = snapshot(placement)["devices"]
            if devices and devices["dev"]["workers"]:
                (rejoined,) = devices["dev"]["workers"].values()
                if rejoined["rss_bytes"] - rejoined["baseline_rss_bytes"] < grown / 2:
                    break
            time.sleep(0.2)
        assert rejoined is not None, "the worker did not register again"
        assert rejoined["models"] == []
        assert rejoined["rss_bytes"] - rejoined["baseline_rss_bytes"] < grown / 2, (
            rejoined,
            grown,
        )
        again = requests.post(f"{url}/function/mobilenetv3small-mini", data=image,
                              headers={"Content-Type": "image/png"}, timeout=30)  # fmt: skip
        assert again.status_code == 200 and again.headers["X-Cache"] == "miss"
        device = snapshot(placement)["devices"]["dev"]
        assert device["used_bytes"] == sum(
            m["bytes"] for w in device["workers"].values() for m in w["models"]
        )


def _png(side: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_lua_scripts_name_their_keys():
    """Each script's header names its KEYS and ARGV, and the body reaches Redis keys only
    through KEYS (no key built from a prefix inside a script)."""
    from agent.scripts import LUA_DIR

    for path in LUA_DIR.glob("*.lua"):
        text = path.read_text()
        assert "KEYS[1]" in text.split("\n\n")[0] or "-- KEYS" in text, path.name
        body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        assert "brulee:" not in body and ".. ':" not in body, path.name
        assert json.dumps(text)  # plain text


def test_an_async_job_whose_copy_was_evicted_while_queued_runs_as_a_miss(agent):
    """Queued work does not pin: the copy is evicted while an async job waits behind the
    worker's pause; the job is placed again (a new job, followed by ``GET /jobs``) and
    answers with the model reloaded."""
    digits = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}
    url, conn = agent["url"], agent["conn"]
    assert requests.post(f"{url}/function/digits-cnn", json=digits, timeout=30).status_code == 200
    proc = agent["workers"][0]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        accepted = requests.post(f"{url}/async-function/digits-cnn", json=digits, timeout=10)
        assert accepted.status_code == 202
        slots = [f.decode() for f in conn.hkeys(key("entries", "dev"))]
        assert "digits-cnn" in {s.split("|")[0] for s in slots}
        assert int(conn.hget(key("queued", "dev"), slots[0]) or 0) >= 1  # counted, not pinned
        with conn.pipeline() as pipe:
            pipe.multi()
            agent["placement"].copies.evict(pipe, "dev", slots, "test")
            pipe.execute()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    status = {}
    while time.monotonic() < deadline:
        status = requests.get(f"{url}{accepted.headers['Location']}", timeout=10).json()
        if status["status"] in ("finished", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "finished", status
    assert status["id"] == accepted.json()["id"] and status["X-Cache"] == "miss"
    _assert_ready_and_unpinned(agent, "digits-cnn")


def test_a_pin_nobody_holds_is_cleared(agent):
    """A pin left behind (an answer Redis never took: it restarted mid-call) would keep its
    copy unevictable for good; the worker's reconciliation clears it while nothing runs."""
    (worker,) = agent["placement"].members.workers()[0]
    agent["conn"].hset(key("pins", "dev"), f"digits-cnn|{worker}", 3)
    deadline = time.monotonic() + 15
    while agent["conn"].hexists(key("pins", "dev"), f"digits-cnn|{worker}"):
        assert time.monotonic() < deadline, "the stale pin was never cleared"
        time.sleep(0.2)


def test_calls_queued_on_a_dead_worker_are_served_by_another(test_models: Path):
    """A worker is stopped with calls queued on its lane, then killed: the calls never
    started, so they are placed again on the other worker and answered 200. The first call
    after the pause is the exception: Redis hands it to the worker's pending blocking pop (into
    its socket), so the dead worker had taken it — that one is answered "worker … died"."""
    from concurrent.futures import ThreadPoolExecutor

    digits = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}
    with running_agent(test_models, CAP, workers=2, token=TOKEN) as agent:
        url = agent["url"]
        first = requests.post(f"{url}/function/digits-cnn", json=digits, timeout=30)
        holder = first.headers["X-Worker"]
        placement = Placement(redis.Redis.from_url(agent["redis_url"]))
        pid = int(placement.r.hget(key("worker", holder), "pid"))
        proc = next(p for p in agent["workers"] if p.pid == pid)
        os.kill(pid, signal.SIGSTOP)
        with ThreadPoolExecutor(3) as pool:
            calls = [
                pool.submit(requests.post, f"{url}/function/digits-cnn", json=digits, timeout=60)
                for _ in range(3)
            ]
            deadline = time.monotonic() + 10
            # two queue behind the pause (a third would get a second copy elsewhere)
            while placement.r.llen(key("lane", holder)) < 2:
                assert time.monotonic() < deadline, "the calls were not queued on the holder"
                time.sleep(0.05)
            proc.kill()
            answers = [c.result() for c in calls]
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 200, 503], [a.text for a in answers]
        assert all(a.headers["X-Worker"] != holder for a in answers if a.status_code == 200)
        assert all("died" in a.json()["error"] for a in answers if a.status_code == 503)


def test_answers_unpin_after_redis_forgot_its_scripts(agent):
    """The answer's pipeline runs the unpin as EVAL of its source (no SCRIPT EXISTS round trip
    first): it still unpins after Redis forgot every script (a restart, SCRIPT FLUSH)."""
    _evict_all(agent)
    x = to_npy(np.zeros((1, 8, 8, 1), dtype=np.float32))
    for _ in range(2):  # a miss, then a hit
        agent["conn"].script_flush()
        head = _sync(agent, _req(agent, "digits-cnn", reply=key("reply", uuid.uuid4().hex)), x)
        assert "error" not in head, head
        _assert_ready_and_unpinned(agent, "digits-cnn")
    assert head["cache"] == "hit"
