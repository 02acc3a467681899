"""Several devices on one Redis, for real: each device a network namespace with its own
address, host name and /dev/shm (``loadgen.fleet``), a Redis with a password in a controller
namespace, the gateway in a namespace of its own. Placement across the devices, a device's
death (SIGKILL; its link cut with ``ip link set eth0 down``) and its rejoining.

The tests of this module share one fleet and run in order (each leaves it whole)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from loadgen.fleet import Fleet, unavailable, worker_device
from loadgen.replay_payloads import build_payloads

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}")

CAP = 12_000_000  # per device; the test models' estimates are 0.05–9 MB
DEVICES = ("d1", "d2", "d3")
DETECT_S = 12.0  # heartbeat TTL (5 s) + the others' membership check (every 5 s) + slack


@pytest.fixture(scope="module")
def fleet(test_models: Path, test_catalog: dict):
    if REASON is not None:  # pragma: no cover - skipped above, with the reason printed
        pytest.skip(REASON)
    devices = [worker_device(d, CAP, test_models, "cremebrulee") for d in DEVICES]
    with Fleet(devices, test_models) as f:
        listing = f.get("/system/functions", headers={"Authorization": f"Bearer {f.token}"})
        f.bodies = build_payloads(listing.json())
        assert set(f.bodies) == set(test_catalog)
        yield f


def invoke(fleet: Fleet, function: str):
    body, content_type = fleet.bodies[function]
    return fleet.submit(
        "POST", f"/function/{function}", data=body, headers={"Content-Type": content_type}
    )


def device_of(fleet: Fleet, resp) -> str:
    assert resp.status_code == 200, resp.text
    return fleet.workers().get(resp.headers["X-Worker"]) or resp.headers["X-Worker"].split("-")[0]


def holders(fleet: Fleet, model: str) -> set[str]:
    """Devices whose accounting holds a copy of ``model``."""
    conn = fleet.redis()
    return {d for d in DEVICES if any(f.decode().startswith(f"{model}|")
                                      for f in conn.hkeys(f"brulee:entries:{d}"))}  # fmt: skip


def assert_caps_hold(fleet: Fleet) -> dict:
    devices = fleet.cache()["devices"]
    for name, dev in devices.items():
        assert dev["used_bytes"] <= dev["cap_bytes"] == CAP, (name, dev["used_bytes"])
    return devices


def most_free(devices: dict, alive: set[str]) -> str:
    return min(alive, key=lambda d: (devices[d]["used_bytes"] - devices[d]["cap_bytes"], d))


def test_misses_spread_to_free_memory_hits_stay_warm_caps_hold(fleet: Fleet) -> None:
    """Inputs travel inline (no shared spool), each miss goes to the device with the most free
    memory, a warm device serves the hits, and no device's cap is exceeded."""
    assert set(fleet.workers().values()) == set(DEVICES)
    # each worker has a spool of its own (its marker is there), just not the gateway's
    assert all(fleet.redis().hget(f"brulee:worker:{w}", "spool") for w in fleet.workers())
    order = ["mobilenet-micro", "mobilenetv2-mini", "digits-cnn", "tiny-cnn"]
    placed = {}
    for model in order:
        expected = most_free(assert_caps_hold(fleet), set(DEVICES))
        miss = invoke(fleet, model).result()
        assert miss.headers["X-Cache"] == "miss"
        placed[model] = device_of(fleet, miss)
        assert placed[model] == expected, (model, placed)
    assert len(set(placed[m] for m in order[:3])) == 3  # three misses, three devices
    for model in order:
        hit = invoke(fleet, model).result()
        assert hit.headers["X-Cache"] == "hit" and device_of(fleet, hit) == placed[model]
    # the largest model does not fit anywhere without evicting: cheapest device, caps hold
    big = invoke(fleet, "mobilenetv3small-mini").result()
    assert big.status_code == 200, big.text
    assert_caps_hold(fleet)


def test_hot_model_gets_a_second_copy_on_another_device(fleet: Fleet) -> None:
    """A burst backs up the one device holding the model: a second copy goes to another
    device's free memory (SCALE_OUT_QUEUE), never by evicting there."""
    model = "digits-cnn"
    before = holders(fleet, model)
    assert len(before) == 1
    evictions = {d: sum(v["evictions"].values()) for d, v in fleet.cache()["devices"].items()}
    # back the holder's queue up for sure: pause its worker (a burst alone may be drained as
    # fast as it comes on a quiet machine, or sent too slowly on a loaded one)
    (holder,) = before
    fleet.signal_device(holder, signal.SIGSTOP)
    try:
        pending = [invoke(fleet, model) for _ in range(8)]
        _wait(lambda: len(holders(fleet, model)) >= 2, 30, "no second copy")
    finally:
        fleet.signal_device(holder, signal.SIGCONT)
    answers = [f.result() for f in pending]
    served = {device_of(fleet, a) for a in answers}
    assert len(holders(fleet, model)) >= 2 and len(served) >= 2, served
    after = {d: sum(v["evictions"].values()) for d, v in assert_caps_hold(fleet).items()}
    assert after == evictions  # replicas only into free memory


def burst_until(fleet: Fleet, model: str, done, bursts: int = 8) -> set[str]:
    """Bursts of 60 concurrent calls of ``model`` until ``done()``; the devices that served.
    A burst backs the model up (the queue that makes a second copy) only if its calls arrive
    faster than a worker runs them, which a busy machine's client may not manage every time."""
    served: set[str] = set()
    for _ in range(bursts):
        answers = [f.result() for f in [invoke(fleet, model) for _ in range(60)]]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:3]
        served |= {device_of(fleet, a) for a in answers}
        if done():
            break
    return served


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        time.sleep(0.1)
    return found


def taken_by_stopped_worker(fleet: Fleet, device: str, model: str):
    """A call of ``model`` that the device's worker has taken (popped) but not run: the worker
    is stopped (SIGSTOP) while blocked in its pop, so Redis hands the call to it. Returns the
    call's future; the worker stays stopped."""
    conn = fleet.redis()
    worker = next(w for w, d in fleet.workers().items() if d == device)
    lanes = [f"brulee:lane:{worker}", f"brulee:lane:{worker}:loads"]
    for _ in range(10):
        fleet.signal_device(device, signal.SIGSTOP)
        pending = invoke(fleet, model)
        time.sleep(0.3)
        if not any(conn.llen(k) for k in lanes):
            return pending  # popped: on its way to the device
        fleet.signal_device(device, signal.SIGCONT)  # its pop had timed out: try again
        assert pending.result().status_code == 200
    pytest.fail("the stopped worker never received a call")


def test_killed_device_is_detected_released_served_elsewhere_and_rejoins(fleet: Fleet) -> None:
    """SIGKILL of a device's worker (no goodbye): the call it had taken is answered 503 naming
    the device, a call routed to it meanwhile is placed again on another device; within
    seconds it is forgotten and its copies released; started again, it rejoins with nothing
    accounted, and the next copy goes to it (most free)."""
    model = "mobilenet-micro"
    victim = next(iter(holders(fleet, model)))
    taken = taken_by_stopped_worker(fleet, victim, model)
    fleet.kill_device(victim)
    killed = time.monotonic()
    resp = invoke(fleet, model).result()
    assert resp.status_code == 200 and device_of(fleet, resp) != victim, resp.text
    answer = taken.result()
    assert answer.status_code == 503 and f"device {victim!r}" in answer.json()["error"]
    _wait(lambda: victim not in fleet.workers().values(), DETECT_S, f"{victim} not forgotten")
    assert time.monotonic() - killed < DETECT_S
    assert not fleet.redis().hlen(f"brulee:entries:{victim}")  # its copies are released
    fleet.start_device(victim)
    fleet.wait_for_workers(1, device=victim)
    devices = assert_caps_hold(fleet)
    assert devices[victim]["used_bytes"] == 0
    # the rejoined device is the emptiest: where a backed-up model's next copy goes
    assert most_free(devices, set(DEVICES)) == victim
    model = min(sorted(fleet.bodies), key=lambda m: len(holders(fleet, m)) or 9)
    assert victim in burst_until(fleet, model, lambda: victim in holders(fleet, model))


def test_device_whose_link_is_cut_answers_in_flight_call_with_its_name(fleet: Fleet) -> None:
    """A call the device had taken (popped) when its link went down is answered 503 naming
    the device, within seconds; the next call is served elsewhere; with the link back up the
    device rejoins with an accounting that matches what it holds."""
    model = "tiny-cnn"
    victim = next(iter(holders(fleet, model)), None)
    if victim is None or len(holders(fleet, model)) > 1:
        pytest.fail(f"{model} should be warm on one device: {holders(fleet, model)}")
    conn = fleet.redis()
    pending = taken_by_stopped_worker(fleet, victim, model)
    fleet.link(victim, up=False)
    fleet.signal_device(victim, signal.SIGCONT)
    cut = time.monotonic()
    try:
        answer = pending.result()
        assert answer.status_code == 503, answer.text
        assert f"device {victim!r}" in answer.json()["error"], answer.text
        assert time.monotonic() - cut < DETECT_S
        assert victim not in fleet.workers().values()
        elsewhere = invoke(fleet, model).result()
        assert device_of(fleet, elsewhere) != victim
    finally:
        fleet.link(victim, up=True)
    _wait(lambda: victim in fleet.workers().values(), 30, f"{victim} did not rejoin")
    devices = assert_caps_hold(fleet)
    registered = set(fleet.workers())
    for d in DEVICES:
        slots = [f.decode().rsplit("|", 1)[1] for f in conn.hkeys(f"brulee:entries:{d}")]
        assert set(slots) <= registered, (d, slots)
    assert devices[victim]["used_bytes"] == 0  # it dropped what it held when forgotten
