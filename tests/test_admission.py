"""Admission: a miss whose memory is held by executing or loading copies waits for it — in
order, within its deadline, in a bounded queue. Placement-level cases on a real redis-server;
end-to-end cases on a real agent (workers, HTTP, test models)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from agent import admission, waiting
from agent.dispatch import SYNC, submit, with_facts
from agent.keys import key
from agent.placement import ModelFacts, Placement, QueueFull
from agent.snapshot import snapshot
from tests.agent_fixtures import redis_server, running_agent

pytestmark = pytest.mark.timeout(180)
CAP = 1000
TOKEN = "test-token"


@pytest.fixture()
def conn():
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def _placement(conn, max_waiting: int = 8) -> Placement:
    placement = Placement(conn, "cremebrulee", max_waiting=max_waiting)
    placement.members.set_device("dev", cap=CAP, policy="cremebrulee")
    placement.members.register("w0", "dev", 100, "host")
    return placement


def _req(model: str, size: int, reply: str) -> dict:
    req = {
        "function": model,
        "model": model,
        "file": f"{model}.tflite",
        "reply": reply,
        "enqueued_at": time.time(),
    }
    return with_facts(req, ModelFacts(model, size, 0.1, 0.01), False)


def _lane_models(conn) -> list[str]:
    """The models of the calls on w0's lanes, in the order it pops them."""
    from agent.keys import lanes

    calls = [m for name in lanes("w0") for m in conn.lrange(name, 0, -1)]
    return [json.loads(m.split(b"\n", 1)[0])["model"] for m in calls]


def _hold(placement: Placement, model: str, size: int) -> None:
    """A copy that holds ``size`` bytes and executes (pinned) until released."""
    placement.place(ModelFacts(model, size, 0.1, 0.01), lambda pipe, d: None)
    placement.copies.loaded("dev", model, "w0", size, 0.1)
    placement.copies.claim("dev", model, "w0")


def test_waiting_misses_are_placed_in_arrival_order_without_overtaking(conn):
    """A large model first, then a small one that would fit sooner: memory that frees goes
    to the large one first; the small one waits behind it (it is not starved either)."""
    placement = _placement(conn)
    _hold(placement, "a", 600)
    _hold(placement, "b", 300)  # 900 of 1000 held by executing copies
    big = submit(placement, _req("big", 700, "r1"), b"", SYNC, "t-big")
    small = submit(placement, _req("small", 100, "r2"), b"", SYNC, "t-small")
    assert big.ticket == "t-big" and small.ticket == "t-small"  # small fits, but big waits
    assert (big.position, small.position) == (0, 1)
    placement.copies.unpin("dev", "b", "w0", 0.01)  # 300 free: not enough for big
    assert waiting.admit(placement, "dev") == 0
    assert _lane_models(conn) == []  # small did not overtake big
    placement.copies.unpin("dev", "a", "w0", 0.01)
    assert waiting.admit(placement, "dev") == 2
    assert _lane_models(conn) == ["big", "small"]
    assert conn.zcard(key("waiting", "dev")) == 0
    device = snapshot(placement)["devices"]["dev"]
    assert device["used_bytes"] <= CAP and device["admission"]["admitted"] == 2


def test_a_new_miss_joins_the_queue_when_others_wait(conn):
    placement = _placement(conn)
    _hold(placement, "a", 950)
    first = submit(placement, _req("x", 500, "r1"), b"", SYNC, "t1")
    assert first.ticket == "t1"
    placement.copies.unpin("dev", "a", "w0", 0.01)  # now everything is free...
    later = submit(placement, _req("y", 10, "r2"), b"", SYNC, "t2")
    assert later.ticket == "t2"  # ...but "x" waits: no overtaking
    assert waiting.admit(placement, "dev") == 2
    assert _lane_models(conn) == ["x", "y"]


def test_the_queue_is_bounded(conn):
    placement = _placement(conn, max_waiting=1)
    _hold(placement, "a", 950)
    submit(placement, _req("x", 500, "r1"), b"", SYNC, "t1")
    with pytest.raises(QueueFull, match="max-waiting") as refused:
        submit(placement, _req("y", 500, "r2"), b"", SYNC, "t2")
    assert refused.value.status == 429 and refused.value.retry_after >= 1
    assert conn.zcard(key("waiting", "dev")) == 1


def test_the_bound_counts_models_not_requests(conn):
    """Requests for a model that already waits ride along (one load serves them all): with
    room for one waiting model, a burst for "x" waits whole, "y" is refused; all requests
    together stay within REQUESTS_PER_LOAD per model allowed; once placed, the riders are
    hits on the copy the first one loads."""
    placement = _placement(conn, max_waiting=1)
    _hold(placement, "a", 950)
    rides = admission.REQUESTS_PER_LOAD
    tickets = [submit(placement, _req("x", 500, f"r{i}"), b"", SYNC, f"t{i}") for i in range(rides)]
    assert [d.ticket for d in tickets] == [f"t{i}" for i in range(rides)]
    with pytest.raises(QueueFull, match="1 models"):
        submit(placement, _req("y", 500, "ry"), b"", SYNC, "ty")
    with pytest.raises(QueueFull):  # the ceiling on requests, riders included
        submit(placement, _req("x", 500, "rx"), b"", SYNC, "tx")
    assert waiting.models_waiting(conn, "dev") == {"x": rides}
    placement.copies.unpin("dev", "a", "w0", 0.01)
    assert waiting.admit(placement, "dev") == rides
    assert _lane_models(conn) == ["x"] * rides
    assert conn.hget(key("misses", "dev"), "x") == b"1"  # one load; the riders are hits
    assert conn.hget(key("hits", "dev"), "x") == str(rides - 1).encode()


@pytest.mark.parametrize(
    ("waiting_now", "model", "full"),
    [
        ({}, "x", False),
        ({"x": 3}, "x", False),  # rides with "x"
        ({"x": 3}, "y", True),  # a second model: past the bound of one
        ({"x": 0}, "y", False),  # nobody waits for "x" any more
        ({"x": admission.REQUESTS_PER_LOAD}, "x", True),  # the ceiling on requests
    ],
)
def test_the_bound_rule(waiting_now, model, full):
    assert admission.is_full(waiting_now, model, max_waiting=1) is full


def test_a_ticket_past_its_deadline_is_answered_not_placed(conn):
    placement = _placement(conn)
    _hold(placement, "a", 950)
    submit(placement, _req("x", 500, "reply-x"), b"", SYNC, "t1", deadline=time.time() - 1)
    placement.copies.unpin("dev", "a", "w0", 0.01)
    assert waiting.admit(placement, "dev") == 0
    head, _ = conn.lpop("reply-x").split(b"\n", 1)
    answer = json.loads(head)
    assert answer["status"] == 503 and "waited" in answer["error"] and answer["retry_after"] >= 1
    assert _lane_models(conn) == [] and not conn.hexists(key("entries", "dev"), "x|w0")


def test_cancel_takes_a_ticket_out_once(conn):
    placement = _placement(conn)
    _hold(placement, "a", 950)
    decision = submit(placement, _req("x", 500, "r1"), b"", SYNC, "t1")
    assert waiting.cancel(conn, "dev", decision.ticket)
    assert not waiting.cancel(conn, "dev", decision.ticket)
    placement.copies.unpin("dev", "a", "w0", 0.01)
    assert waiting.admit(placement, "dev") == 0 and _lane_models(conn) == []


# -- end to end -------------------------------------------------------------------------------


def digits_input() -> list:
    return np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32).tolist()


def _copies(test_models: Path, out: Path, n: int) -> Path:
    """``n`` functions d0…d{n-1}, each its own copy of the digits model (distinct models of
    the same size), in a scratch models directory."""
    import shutil

    catalog = json.loads((test_models / "catalog.json").read_text())
    base = next(m for m in catalog["models"] if m["name"] == "digits-cnn")
    models = []
    for i in range(n):
        shutil.copy(test_models / base["file"], out / f"d{i}.tflite")
        models.append({**base, "name": f"d{i}", "file": f"d{i}.tflite"})
    (out / "catalog.json").write_text(json.dumps({**catalog, "models": models}))
    return out


@pytest.fixture(scope="module")
def ten_models(test_models: Path, tmp_path_factory) -> tuple[Path, int]:
    out = _copies(test_models, tmp_path_factory.mktemp("ten"), 10)
    file_bytes = (out / "d0.tflite").stat().st_size
    return out, 2 * file_bytes  # the gateway's first estimate: twice the file size


def test_a_cold_burst_of_20_clients_is_served_within_the_cap(ten_models):
    """20 concurrent clients, 3 calls each, over 10 models of which only 3 fit together: every
    call answered 200, the cap never exceeded (sampled throughout)."""
    models_dir, size = ten_models
    cap = 3 * size
    with running_agent(models_dir, cap, workers=2, token=TOKEN) as agent:
        peaks: list[int] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                snap = requests.get(
                    f"{agent['url']}/system/cache",
                    timeout=10,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ).json()
                peaks.extend(d["used_bytes"] for d in snap["devices"].values())

        def client(i: int) -> list[int]:
            with requests.Session() as s:
                return [
                    s.post(
                        f"{agent['url']}/function/d{(i + k) % 10}",
                        json={"inputs": digits_input()},
                        timeout=60,
                    ).status_code
                    for k in range(3)
                ]

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(20) as pool:
                codes = [c for calls in pool.map(client, range(20)) for c in calls]
        finally:
            done.set()
            watcher.join()
        assert codes == [200] * 60, codes
        assert peaks and max(peaks) <= cap


def _reserve(agent: dict, size: int) -> tuple[Placement, str]:
    """Hold ``size`` bytes on the agent's device with a reservation nobody loads (a copy
    ``loading``: pinned), as a long load would."""
    placement = Placement(redis.Redis.from_url(agent["redis_url"]))
    decision, _ = placement.place(ModelFacts("holder", size, 0.1, 0.01), lambda pipe, d: None)
    return placement, decision.worker


def test_a_request_waits_for_memory_then_runs(ten_models):
    models_dir, size = ten_models
    with running_agent(models_dir, 2 * size, workers=1, token=TOKEN) as agent:
        placement, worker = _reserve(agent, 2 * size)  # all of it
        result = {}

        def call():
            result["resp"] = requests.post(
                f"{agent['url']}/function/d0", json={"inputs": digits_input()}, timeout=60
            )

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        listing = []
        while time.monotonic() < deadline and not listing:
            snap = requests.get(
                f"{agent['url']}/system/cache",
                timeout=10,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ).json()
            listing = snap["devices"]["dev"]["admission"]["waiting"]
            time.sleep(0.05)
        assert [w["function"] for w in listing] == ["d0"] and listing[0]["kind"] == "sync"
        time.sleep(1.0)
        placement.copies.give_back("dev", "holder", worker)  # memory frees
        caller.join(30)
        resp = result["resp"]
        assert resp.status_code == 200, resp.text
        assert float(resp.headers["X-Queue-Seconds"]) >= 1.0  # the wait is part of the queue
        metrics = requests.get(f"{agent['url']}/metrics", timeout=10).text
        assert "brulee_admission_wait_seconds_count 1.0" in metrics
        assert 'brulee_admission_total{device="dev",outcome="admitted"} 1.0' in metrics


def test_a_burst_for_one_absent_model_waits_whole_and_is_served(ten_models):
    """150 concurrent calls for one model while its memory is held: they ride on one waiting
    load (no 429 although 150 > 64), each holds a gateway thread and its Redis connection
    while it waits (more than redis-py's default pool of 100), and all are answered 200 once
    memory frees — one load, the rest hits."""
    models_dir, size = ten_models
    burst = 150
    with running_agent(models_dir, 2 * size, workers=1, token=TOKEN) as agent:
        placement, worker = _reserve(agent, 2 * size)

        def call(_: int) -> requests.Response:
            return requests.post(
                f"{agent['url']}/function/d0", json={"inputs": digits_input()}, timeout=90
            )

        with ThreadPoolExecutor(burst) as pool:
            answers = pool.map(call, range(burst))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if placement.r.zcard(key("waiting", "dev")) >= burst:
                    break
                time.sleep(0.1)
            assert placement.r.zcard(key("waiting", "dev")) == burst
            placement.copies.give_back("dev", "holder", worker)  # memory frees
            answers = list(answers)
        assert [r.status_code for r in answers] == [200] * burst, {r.text for r in answers}
        assert sorted(r.headers["X-Cache"] for r in answers) == ["hit"] * (burst - 1) + ["miss"]


def test_the_deadline_header_bounds_the_wait(ten_models):
    models_dir, size = ten_models
    with running_agent(models_dir, 2 * size, workers=1, token=TOKEN) as agent:
        _reserve(agent, 2 * size)
        t0 = time.monotonic()
        resp = requests.post(
            f"{agent['url']}/function/d0",
            json={"inputs": digits_input()},
            headers={"X-Deadline-Ms": "700"},
            timeout=60,
        )
        took = time.monotonic() - t0
        assert resp.status_code == 503, resp.text
        assert "waited" in resp.json()["error"] and "memory" in resp.json()["error"]
        assert int(resp.headers["Retry-After"]) >= 1
        assert 0.6 <= took < 5
        bad = requests.post(
            f"{agent['url']}/function/d0",
            json={"inputs": digits_input()},
            headers={"X-Deadline-Ms": "soon"},
            timeout=10,
        )
        assert bad.status_code == 400 and "X-Deadline-Ms" in bad.json()["error"]
        snap = requests.get(
            f"{agent['url']}/system/cache", timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}
        ).json()
        assert snap["devices"]["dev"]["admission"]["waiting"] == []  # it left the queue


def test_a_full_queue_answers_429(ten_models):
    models_dir, size = ten_models
    with running_agent(models_dir, 2 * size, workers=1, token=TOKEN, max_waiting=1) as agent:
        _reserve(agent, 2 * size)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(
                requests.post,
                f"{agent['url']}/function/d0",
                json={"inputs": digits_input()},
                headers={"X-Deadline-Ms": "3000"},
                timeout=60,
            )
            time.sleep(0.5)
            second = requests.post(
                f"{agent['url']}/function/d1", json={"inputs": digits_input()}, timeout=60
            )
            assert second.status_code == 429, second.text
            assert int(second.headers["Retry-After"]) >= 1 and "max-waiting" in second.text
            assert first.result().status_code == 503
        # the agent keeps serving: a hit-free call that fits is fine once memory is back
        ok = requests.post(
            f"{agent['url']}/async-function/d2", json={"inputs": digits_input()}, timeout=10
        )
        assert ok.status_code == 202
        status = requests.get(f"{agent['url']}{ok.headers['Location']}", timeout=10).json()
        assert status["status"] == "queued" and status.get("waiting_for_memory") is True


def test_a_copy_with_requests_queued_is_drained_not_evicted_under_them(conn):
    """Cap 1000: "a" (600, ready) has a request queued on it; "b" (600) needs its memory. "a"
    is not evicted under its queued request: it is drained — no new requests (a call for "a"
    is now a miss that waits, in order) — and the unpin of its last queued request evicts it,
    which lets "b" in."""
    placement = _placement(conn)
    placement.place(ModelFacts("a", 600, 0.1, 0.01), lambda pipe, d: None)  # queued: 1
    placement.copies.loaded("dev", "a", "w0", 600, 0.1)
    decision = submit(placement, _req("b", 600, "r-b"), b"", SYNC, "t-b")
    assert decision.ticket == "t-b"
    entry = json.loads(conn.hget(key("entries", "dev"), "a|w0"))
    assert entry["state"] == "draining"
    assert placement.try_hit("a", b"msg") is None  # a draining copy takes no new request
    later = submit(placement, _req("a", 600, "r-a2"), b"", SYNC, "t-a2")
    assert later.ticket == "t-a2"  # behind "b", in order
    claimed = placement.copies.claim("dev", "a", "w0")  # the queued request runs
    assert claimed.entry is not None
    waiting_count, evicted = placement.copies.unpin("dev", "a", "w0", 0.01)
    assert (int(waiting_count), int(evicted)) == (2, 1)
    assert not conn.hexists(key("entries", "dev"), "a|w0")
    assert conn.hexists(key("releasing", "dev"), "a|w0")
    placement.copies.released("dev", "a", "w0")
    assert waiting.admit(placement, "dev") == 1  # "b"; then "a" waits for "b"'s memory
    assert _lane_models(conn) == ["b"]
    assert json.loads(conn.hget(key("entries", "dev"), "b|w0"))["state"] == "loading"


def test_behind_a_head_that_does_not_fit_only_hits_go(conn):
    """ "big" waits at the head; "x" waits behind it. Once "x" is cached (brought in by an
    earlier placement), "x" needs no memory and is placed; "small", also behind "big" and not
    cached, still waits (no overtaking for memory)."""
    placement = _placement(conn)
    _hold(placement, "a", 900)
    submit(placement, _req("big", 800, "r1"), b"", SYNC, "t-big")
    submit(placement, _req("x", 50, "r2"), b"", SYNC, "t-x")
    submit(placement, _req("small", 50, "r3"), b"", SYNC, "t-small")
    conn.hset(key("entries", "dev"), "x|w0", json.dumps(
        {"bytes": 50, "state": "ready", "since": 1.0, "inserted_at": 1.0}))  # fmt: skip
    assert waiting.admit(placement, "dev") == 1
    assert _lane_models(conn) == ["x"]
    assert [t.decode() for t in conn.zrange(key("waiting", "dev"), 0, -1)] == ["t-big", "t-small"]
