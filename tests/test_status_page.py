"""The status page (``/status``) and its JSON (``/system/status``) on a real agent, the page
driven in a real headless Chromium (the distribution's, through Playwright; never a
downloaded browser): it asks for the token, shows the functions and copies, and changes when
functions are invoked — a copy appears, an eviction is listed with the utilities compared.

``BRULEE_STATUS_SCREENSHOT=docs/img/status-page.png`` also saves the page's screenshot there
(how the one in docs/agent.md was made)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from agent import evictions
from agent.policies import Entry, make_policy
from tests.agent_fixtures import redis_server, running_agent

TOKEN = "page-token"
CAP = 5 * 1024 * 1024  # digits, tiny and mobilenet-micro fit; mobilenetv2-mini evicts
pytestmark = pytest.mark.timeout(120)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def invoke(agent: dict, name: str) -> requests.Response:
    """One synchronous call: a digits tensor, or a small PNG for the image models."""
    url = f"{agent['url']}/function/{name}"
    if name == "digits-cnn":
        return requests.post(url, json={"inputs": np.zeros((1, 8, 8, 1)).tolist()}, timeout=60)
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(buf, "PNG")
    return requests.post(
        url, data=buf.getvalue(), headers={"Content-Type": "image/png"}, timeout=60
    )


@pytest.fixture(scope="module")
def agent(test_models: Path):
    with running_agent(test_models, CAP, workers=1, token=TOKEN) as info:
        yield info


def test_page_is_served_without_data_and_the_json_needs_the_token(agent):
    page = requests.get(f"{agent['url']}/status", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert "digits-cnn" not in page.text and TOKEN not in page.text  # no data, no secret
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # no assets
    assert "https://" not in page.text
    for headers in ({}, auth("wrong")):
        resp = requests.get(f"{agent['url']}/system/status", headers=headers, timeout=10)
        assert resp.status_code == 401 and "Authorization: Bearer" in resp.json()["error"]


def test_json_shows_copies_utilities_evictions_history_and_functions(agent):
    for name in ("digits-cnn", "tiny-cnn", "mobilenet-micro", "mobilenetv2-mini", "digits-cnn"):
        assert invoke(agent, name).status_code == 200
    deadline = time.monotonic() + 10
    while True:  # the sampler takes one sample every 2 s
        doc = requests.get(f"{agent['url']}/system/status", headers=auth(), timeout=10).json()
        if len(doc["memory"]) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    device = doc["devices"]["dev"]
    models = {c["model"]: c for c in device["copies"]}
    assert "mobilenet-micro" not in models  # evicted for mobilenetv2-mini
    digits = models["digits-cnn"]
    assert digits["state"] == "ready" and digits["hits"] >= 1 and digits["utility"] > 0
    assert digits["last_used"] <= doc["time"] and digits["worker"] in device["workers"]
    decision = next(e for e in device["evictions"] if e["incoming"]["model"] == "mobilenetv2-mini")
    assert [v["model"] for v in decision["victims"]] == ["mobilenet-micro"]
    assert decision["policy"] == "cremebrulee" and decision["need_bytes"] > 0
    compared = [*decision["victims"], *decision["kept"]]
    assert all(isinstance(c["utility"], float) for c in compared)
    # CremeBrulee takes the lowest-utility copies first (then the largest of those)
    assert decision["victims"][0]["utility"] <= min(k["utility"] for k in decision["kept"])
    assert len(doc["memory"]) >= 2
    last = doc["memory"][-1]["devices"]["dev"]
    assert last["rss"] and all(v > 0 for v in last["rss"].values())
    fns = {f["name"]: f for f in doc["functions"]}
    assert fns["digits-cnn"]["hits"] >= 1 and 0 < fns["digits-cnn"]["hit_ratio"] < 1
    assert fns["digits-cnn"]["mean_s"]["total"] > 0
    assert fns["mobilenetv3small-mini"]["hit_ratio"] is None
    # a copy evicted that its worker has not dropped yet is listed as releasing
    import redis

    from agent.keys import key

    conn = redis.Redis.from_url(agent["redis_url"])
    conn.hset(key("releasing", "dev"), "mobilenet-micro|gone-worker", 1)
    try:
        doc = requests.get(f"{agent['url']}/system/status", headers=auth(), timeout=10).json()
    finally:
        conn.hdel(key("releasing", "dev"), "mobilenet-micro|gone-worker")
    [gone] = [c for c in doc["devices"]["dev"]["copies"] if c["worker"] == "gone-worker"]
    assert gone["state"] == "releasing" and gone["bytes"] is None
    # the same per-function seconds reach Prometheus
    metrics = requests.get(f"{agent['url']}/metrics", timeout=10).text
    assert 'brulee_function_seconds_total{function="digits-cnn",kind="total"}' in metrics


def test_utilities_follow_each_policy():
    a = Entry("a", 100, 1.0, 0.1, requests=9, last_used=5.0, inserted_at=1.0)
    b = Entry("b", 100, 1.0, 0.1, requests=1, last_used=7.0, inserted_at=2.0)
    assert evictions.utilities(make_policy("lru"), [a, b], 10, 8.0) == [5.0, 7.0]
    u = evictions.utilities(make_policy("cremebrulee"), [a, b], 10, 8.0)
    assert u[0] > u[1] > 0  # the more popular copy is worth more
    assert evictions.utilities(make_policy("random"), [a, b], 10, 8.0) == [None, None]
    assert evictions.utilities(make_policy("lfu"), [a], 10, 8.0) == [[9.0, 5.0]]


def test_the_eviction_log_is_capped():
    import redis

    with redis_server() as server:
        conn = redis.Redis.from_url(server.url)
        for i in range(evictions.KEPT + 7):
            with conn.pipeline() as pipe:
                evictions.record(pipe, "dev", {"time": i, "victims": []})
                pipe.execute()
        kept = evictions.recent(conn, "dev")
        assert len(kept) == evictions.KEPT and kept[0]["time"] == evictions.KEPT + 6


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no Chromium: install the distribution's package (apt-get install chromium)")
    return path


def test_page_in_a_headless_browser(test_models: Path):
    """A fresh agent (nothing loaded yet) watched by the page in Chromium."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("no Playwright: pip install -e '.[test]' (it drives the system Chromium)")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root otherwise
    with (
        running_agent(test_models, CAP, workers=1, token=TOKEN) as agent,
        sync_api.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=chromium(), args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        elsewhere: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        def only_the_agent(route):
            if route.request.url.startswith(agent["url"]):
                route.continue_()
            else:  # an external asset: the page must work offline
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_agent)
        page.goto(f"{agent['url']}/status")
        page.wait_for_selector("#login-section:not(.hidden)")
        page.fill("#token", "wrong")
        page.click("#connect")
        # (selectors, not page-side functions: the page's CSP forbids eval, rightly)
        page.wait_for_selector("#login-error:has-text('refused')")
        errors.clear()  # the 401 just provoked is logged by Chromium as a failed load
        page.fill("#token", TOKEN)
        page.click("#connect")
        rows = page.locator("#functions tbody tr")
        rows.first.wait_for()
        names = sorted(rows.nth(i).get_attribute("data-function") for i in range(rows.count()))
        catalog = json.loads((test_models / "catalog.json").read_text())
        assert names == sorted(m["name"] for m in catalog["models"])  # every function listed
        assert "nothing loaded" in page.text_content("section[data-device='dev']")

        assert invoke(agent, "digits-cnn").status_code == 200
        page.wait_for_selector("#copies-dev tr[data-model='digits-cnn'][data-state='ready']")
        page.wait_for_selector("#functions tr[data-function='digits-cnn'][data-calls='1']")
        for name in ("tiny-cnn", "mobilenet-micro", "mobilenetv2-mini", "digits-cnn"):
            assert invoke(agent, name).status_code == 200
        page.wait_for_selector("#functions tr[data-function='digits-cnn'][data-calls='2']")
        evicted = page.wait_for_selector("#evictions-dev tr[data-policy='cremebrulee']")
        assert "mobilenet-micro" in evicted.text_content()
        assert "u=" in evicted.text_content()
        assert page.locator("#copies-dev tr[data-model='mobilenet-micro']").count() == 0
        page.wait_for_selector("section[data-device='dev'] svg.chart path.rss")
        # the token left the address bar and is not in the page
        assert TOKEN not in page.url and TOKEN not in page.content()
        shot = os.environ.get("BRULEE_STATUS_SCREENSHOT")
        if shot:
            page.wait_for_timeout(2500)  # one more sample on the chart
            page.screenshot(path=shot, full_page=True)
        browser.close()
    assert not errors, errors  # no script error, no Content-Security-Policy violation
    assert not elsewhere, elsewhere
