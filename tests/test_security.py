"""Bad input and security of the HTTP API, one case at a time, on a real agent (real Redis, a
real worker, real HTTP, the test models): every bad request gets a JSON ``{"error"}`` with a
4xx naming the problem, and the agent serves a good request right after it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from agent.callbacks import CallbackPolicy, CallbackRefused
from tests.agent_fixtures import callback_receiver, running_agent, wait_for

pytestmark = pytest.mark.timeout(120)
CAP = 64 * 1024 * 1024
TOKEN = "security-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def agent(test_models: Path):
    # callbacks may reach the host *named* localhost, not the loopback addresses themselves
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRULEE_CALLBACK_ALLOW", "localhost")
        with running_agent(test_models, CAP, workers=1, token=TOKEN) as info:
            yield info


def digits_input() -> list:
    return np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32).tolist()


def still_serves(agent: dict) -> None:
    resp = requests.post(
        f"{agent['url']}/function/digits-cnn", json={"inputs": digits_input()}, timeout=30
    )
    assert resp.status_code == 200, resp.text


def send(agent: dict, method: str, path: str, data: bytes | str, **headers: str):
    return requests.request(
        method, f"{agent['url']}{path}", data=data, headers={**JSON, **headers}, timeout=30
    )


def assert_error(resp: requests.Response, status: int, *named: str) -> str:
    """``resp`` is a JSON error with ``status`` whose message names every one of ``named``."""
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:300]
    message = resp.json()["error"]
    for word in named:
        assert word in message, message
    return message


ROUTES = [
    ("POST", "/function/digits-cnn", {}),
    ("POST", "/async-function/digits-cnn", {}),
    ("POST", "/system/functions", AUTH),
    ("DELETE", "/system/functions", AUTH),
]


@pytest.mark.parametrize(("method", "path", "headers"), ROUTES)
def test_json_nested_10000_deep_is_400(agent, method, path, headers):
    deep = "[" * 10_000 + "]" * 10_000
    assert_error(send(agent, method, path, deep, **headers), 400, "nested deeper")
    deep_object = '{"a":' * 10_000 + "1" + "}" * 10_000
    assert_error(send(agent, method, path, deep_object, **headers), 400, "nested deeper")
    still_serves(agent)


@pytest.mark.parametrize("number", ["1e999", "-1e999", str(10**400), str(-(10**400))])
@pytest.mark.parametrize(("method", "path", "headers"), ROUTES)
def test_huge_numbers_are_400(agent, method, path, headers, number):
    body = '{"inputs": [[[[%s]]]], "name": %s}' % (number, number)  # noqa: UP031
    assert_error(send(agent, method, path, body, **headers), 400, "out of range")
    still_serves(agent)


@pytest.mark.parametrize("body", ["NaN", '{"inputs": [Infinity]}', "{", b"\xff\xfe", ""])
def test_invalid_json_is_400(agent, body):
    assert_error(send(agent, "POST", "/function/digits-cnn", body), 400, "body")
    still_serves(agent)


def test_numbers_beyond_the_models_dtype_are_400(agent):
    """1e300 is a float64, not a float32: the cast would make it infinite."""
    x = np.zeros((1, 8, 8, 1)).tolist()
    x[0][0][0][0] = 1e300
    resp = requests.post(f"{agent['url']}/function/digits-cnn", json={"inputs": x}, timeout=30)
    assert_error(resp, 400, "float32 range")
    still_serves(agent)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("[]", "got an array"),
        ('"inputs"', "got a string"),
        ("5", "got a number"),
        ("null", "got null"),
        ("{}", '"inputs"'),
        ('{"inputs": "abc"}', "got a string"),
        ('{"inputs": {"a": 1}}', "got an object"),
        ('{"inputs": null}', "got null"),
        ('{"inputs": true}', "got a boolean"),
        ('{"inputs": [[null]]}', "must be numbers"),
        ('{"inputs": [["a", "b"]]}', "strings"),
        ('{"inputs": [true, false]}', "booleans"),
        ('{"inputs": [[1], [1, 2]]}', "rectangular"),
    ],
)
@pytest.mark.parametrize("route", ["function", "async-function"])
def test_wrong_json_types_in_invocations_are_400(agent, route, body, named):
    assert_error(send(agent, "POST", f"/{route}/digits-cnn", body), 400, named)
    still_serves(agent)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("[]", "JSON object"),
        ("null", "JSON object"),
        ('"digits"', "JSON object"),
        ('{"name": 5, "model": "digits-cnn"}', "function name"),
        ('{"name": "x", "model": ["digits-cnn"]}', "model must be a string"),
        ('{"name": "x", "model": "digits-cnn", "handler": ["tensor"]}', "handler must be a string"),
        ('{"name": "x", "model": "digits-cnn", "handler": ""}', "unknown handler"),
        ('{"name": "x", "model": "digits-cnn", "file": 5}', "file must be a string"),
        ('{"name": "x", "model": "digits-cnn", "options": []}', "options must be a mapping"),
        ('{"name": "x", "model": "digits-cnn", "options": {"max_bytes": "1"}}', "max_bytes"),
        ('{"name": "x", "model": "digits-cnn", "options": {"max_bytes": [1]}}', "max_bytes"),
        ('{"name": "x", "model": "digits-cnn", "memory": true}', "memory"),
        ('{"name": "x", "model": "digits-cnn", "memory": [1]}', "memory"),
        ('{"name": "x", "model": "digits-cnn", "memory": 1.5}', "memory"),
        ('{"name": "x", "model": "digits-cnn", "memory": "0"}', "memory"),
        ('{"name": "x", "model": "digits-cnn", "file": "nope.tflite"}', "does not exist"),
        ('{"name": "x", "model": "digits-cnn", "file": "tiny-cnn.tflite"}', "does not fit"),
        ('{"name": "%s", "model": "digits-cnn"}' % ("a" * 129), "function name"),  # noqa: UP031
    ],
)
def test_wrong_types_in_deploy_are_400_and_deploy_nothing(agent, body, named):
    assert_error(send(agent, "POST", "/system/functions", body, **AUTH), 400, named)
    listed = requests.get(f"{agent['url']}/system/functions", headers=AUTH, timeout=10).json()
    assert "x" not in {f["name"] for f in listed["functions"]}
    still_serves(agent)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("[null, null]", "JSON object"),
        ("[]", "JSON object"),
        ("null", "JSON object"),
        ("{}", "functionName"),
        ('{"functionName": null}', "non-empty string"),
        ('{"functionName": 5}', "non-empty string"),
        ('{"functionName": ""}', "non-empty string"),
        ('{"functionName": ["digits-cnn"]}', "non-empty string"),
        ('{"functionName": "digits-cnn", "force": true}', "force"),
    ],
)
def test_wrong_types_in_remove_are_400_and_remove_nothing(agent, body, named):
    assert_error(send(agent, "DELETE", "/system/functions", body, **AUTH), 400, named)
    still_serves(agent)  # digits-cnn is still deployed


@pytest.mark.parametrize("missing", ["name", "model"])
def test_deploy_without_a_required_field_names_it(agent, missing):
    body = {"name": "x", "model": "digits-cnn"}
    del body[missing]
    resp = requests.post(f"{agent['url']}/system/functions", json=body, headers=AUTH, timeout=10)
    assert_error(resp, 400, f"missing required field '{missing}'")
    resp = requests.post(f"{agent['url']}/system/functions", json={}, headers=AUTH, timeout=10)
    assert_error(resp, 400, "missing required field 'name'")
    still_serves(agent)


def test_management_bodies_must_be_json(agent):
    resp = requests.post(
        f"{agent['url']}/system/functions",
        data='{"name": "x", "model": "digits-cnn"}',
        headers={**AUTH, "Content-Type": "text/plain"},
        timeout=10,
    )
    assert_error(resp, 400, "content type", "text/plain")
    still_serves(agent)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/function/digits-cnn", {"POST"}),
        ("GET", "/async-function/digits-cnn", {"POST"}),
        ("TRACE", "/healthz", {"GET", "HEAD"}),
        ("PATCH", "/system/functions", {"GET", "POST", "DELETE"}),
        ("DELETE", "/system/cache", {"GET", "HEAD"}),
        ("POST", "/openapi.json", {"GET", "HEAD"}),
    ],
)
def test_405_is_json_with_allow(agent, method, path, allowed):
    resp = requests.request(method, f"{agent['url']}{path}", headers=AUTH, timeout=10)
    assert_error(resp, 405, method, path)
    assert allowed <= {m.strip() for m in resp.headers["Allow"].split(",")}
    still_serves(agent)


def test_unknown_route_is_json_404(agent):
    assert_error(requests.get(f"{agent['url']}/nope", timeout=10), 404, "/nope")


def test_deadline_header_must_be_a_positive_integer(agent):
    for value in ("0", "-5", "abc", "1.5", "1e3", "+7"):
        resp = requests.post(
            f"{agent['url']}/function/digits-cnn",
            json={"inputs": digits_input()},
            headers={"X-Deadline-Ms": value},
            timeout=10,
        )
        assert_error(resp, 400, "X-Deadline-Ms")
    resp = requests.post(
        f"{agent['url']}/function/digits-cnn",
        json={"inputs": digits_input()},
        headers={"X-Deadline-Ms": "30000"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text


def test_unexpected_errors_are_json_500_and_the_agent_keeps_serving(agent):
    """A real fault: the function registry in Redis holds a record that is not JSON."""
    from agent.placement import key

    conn = redis.Redis.from_url(agent["redis_url"])
    conn.hset(key("functions"), "broken", "{not json")
    try:
        resp = requests.post(f"{agent['url']}/function/broken", json={"inputs": [1]}, timeout=10)
        assert_error(resp, 500, "unexpected error")
        assert "<html" not in resp.text.lower()
    finally:
        conn.hdel(key("functions"), "broken")
    still_serves(agent)


def test_system_cache_needs_the_token(agent):
    url = f"{agent['url']}/system/cache"
    assert_error(requests.get(url, timeout=10), 401, "Bearer")
    assert_error(requests.get(url, headers={"Authorization": "Bearer no"}, timeout=10), 401)
    resp = requests.get(url, headers=AUTH, timeout=10)
    assert resp.status_code == 200 and "devices" in resp.json()
    assert requests.get(f"{agent['url']}/healthz", timeout=10).status_code == 200


def queued_work(agent: dict) -> tuple[int, int, int]:
    """RQ jobs ever created, jobs waiting in queues, parked inputs: what an accepted async
    invocation adds to Redis."""
    conn = redis.Redis.from_url(agent["redis_url"])
    jobs = sum(1 for _ in conn.scan_iter("rq:job:*"))
    waiting = sum(conn.llen(q) for q in conn.scan_iter("rq:queue:*") if conn.type(q) == b"list")
    inputs = sum(1 for _ in conn.scan_iter("brulee:input:*"))
    return jobs, waiting, inputs


@pytest.mark.parametrize(
    ("url", "host", "reason"),
    [
        ("http://127.0.0.1:9/hook", "127.0.0.1", "loopback"),
        ("http://10.0.0.1/hook", "10.0.0.1", "private"),
        ("http://[::1]:9/hook", "::1", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254", "link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1", "loopback"),
        ("http://0.0.0.0:9/", "0.0.0.0", "unspecified"),
        ("http://192.168.1.1/", "192.168.1.1", "private"),
        ("http://224.0.0.1/", "224.0.0.1", "multicast"),
        ("http://2130706433/", "2130706433", "loopback"),  # 127.0.0.1 spelt as one number
        ("ftp://example.org/hook", "ftp", "http or https only"),
        ("file:///etc/passwd", "file", "http or https only"),
        ("http:///nohost", "no host", ""),
    ],
)
def test_callback_to_internal_addresses_is_refused_before_enqueueing(agent, url, host, reason):
    before = queued_work(agent)
    resp = requests.post(
        f"{agent['url']}/async-function/digits-cnn",
        json={"inputs": digits_input()},
        headers={"X-Callback-Url": url},
        timeout=10,
    )
    assert_error(resp, 400, host, reason)
    assert queued_work(agent) == before
    still_serves(agent)


def test_callback_to_an_allowed_host_is_posted(agent):
    """``BRULEE_CALLBACK_ALLOW=localhost`` (the fixture) lets callbacks reach that host name."""
    with callback_receiver() as (port, received):
        resp = requests.post(
            f"{agent['url']}/async-function/digits-cnn",
            json={"inputs": digits_input()},
            headers={"X-Callback-Url": f"http://localhost:{port}/done"},
            timeout=30,
        )
        assert resp.status_code == 202, resp.text
        assert wait_for(received), "the allowed callback was never called"
        assert json.loads(received[0])["job_id"] == resp.json()["id"]
    # the same server by its address is still refused: only the host name is allowed
    resp = requests.post(
        f"{agent['url']}/async-function/digits-cnn",
        json={"inputs": digits_input()},
        headers={"X-Callback-Url": f"http://127.0.0.1:{port}/done"},
        timeout=10,
    )
    assert_error(resp, 400, "127.0.0.1", "loopback")


def test_callback_allow_list_parses_hosts_and_networks():
    policy = CallbackPolicy.parse(" localhost , 10.0.0.0/8, ::1, 192.0.2.7 ")
    assert policy.hosts == frozenset({"localhost"})
    for url in (
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://192.0.2.7/",
        "http://[::ffff:10.0.0.9]/",
    ):
        assert policy.check(url) == url
    for url in ("http://10.0.0.1.nip/", "http://127.0.0.1/", "http://192.0.2.8/"):
        with pytest.raises(CallbackRefused):
            policy.check(url)
    with pytest.raises(ValueError, match="neither a host name nor an IP network"):
        CallbackPolicy.parse("bad host")
    assert CallbackPolicy.parse("").check("https://8.8.8.8/x") == "https://8.8.8.8/x"
