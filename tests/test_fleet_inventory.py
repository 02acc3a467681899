"""The Ansible inventory's ``fleet`` group, rendered by ``deploy/ansible/render-fleet.yml``
with facts gathered on network-namespace hosts (``loadgen.fleet``), run as rendered."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadgen.fleet import CONTROLLER_ADDR, REPO, Device, Fleet, unavailable
from loadgen.replay_payloads import build_payloads
from tests.test_fleet import device_of

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}")


ANSIBLE = REPO / "deploy" / "ansible"
BIN = Path(sys.executable).parent


def _render(fleet: Fleet, hosts: list[str], tmp: Path, test_models: Path) -> Path:
    """Render the example inventory's fleet group with ``render-fleet.yml``: facts gathered
    on each namespace host (its Python runs inside the namespace), nothing installed."""
    local = {}
    for h in hosts:  # the host's interpreter: this Python, inside the host's namespace
        python = tmp / f"python-{h}"
        python.write_text(
            f'#!/bin/sh\nexec ip netns exec {fleet.hosts[h].ns} {sys.executable} "$@"\n'
        )
        python.chmod(0o700)
        local[h] = {"ansible_connection": "local", "ansible_become": False,
                    "ansible_python_interpreter": str(python)}  # fmt: skip
    (tmp / "local.yml").write_text(yaml.safe_dump({"all": {"hosts": local}}))
    out = tmp / "units"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp")}  # fmt: skip
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(ANSIBLE / "inventory.example.yml"),
         "-i", str(tmp / "local.yml"), str(ANSIBLE / "render-fleet.yml"), "-l", "fleet",
         "-e", f"brulee_render_dir={out}", "-e", f"brulee_models_src={test_models}",
         "-e", f"brulee_models_dir={test_models}", "-e", f"brulee_credentials_dir={tmp}"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return out


def _env_file(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def _exec_start(unit: Path, env: dict[str, str]) -> list[str]:
    """The unit's ExecStart with its ${VARS} expanded, the venv's ``brulee`` run from here."""
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a) for a in shlex.split(line[10:])]
    assert argv[0].endswith("/bin/brulee"), argv
    return [sys.executable, "-c", "from agent.cli import main; main()", *argv[1:]]


def test_inventory_fleet_group_runs_on_namespace_hosts(test_models: Path, tmp_path: Path) -> None:
    """The example inventory's `fleet` group (Redis on pi-a with a password, pi-b and nuc-1
    reaching it over the network), rendered by Ansible with each host's facts, runs as
    rendered: each device's worker from its unit's ExecStart and environment file, Redis with
    the role's bind and password, the gateway with pi-b's environment file."""
    inventory = yaml.safe_load((ANSIBLE / "inventory.example.yml").read_text())
    group = inventory["brulee"]["children"]["fleet"]
    hosts, redis_host = list(group["hosts"]), group["vars"]["brulee_redis_host"]
    rendered: dict[str, dict[str, str]] = {}

    def prepare(fleet: Fleet) -> None:
        out = _render(fleet, hosts, tmp_path, test_models)
        for host in hosts:
            env = {"BRULEE_DEVICE": host, **_env_file(out / host / "brulee.env")}
            rendered[host] = env
            argv = _exec_start(out / host / "brulee-worker@.service", env)
            fleet.devices[host].argv, fleet.devices[host].env = [argv], env
        conf = (out / redis_host / "redis.conf").read_text().splitlines()
        fleet.redis_settings = dict(ln.split(" ", 1) for ln in conf if ln.strip())
        gateway = rendered[hosts[1]]
        fleet.gateway_env = {**gateway, "BRULEE_REDIS_URL": gateway["REDIS_URL"]}
        fleet.token = gateway["BRULEE_TOKEN"]

    devices = [Device(h, []) for h in hosts]
    with Fleet(devices, test_models, redis_host=redis_host, prepare=prepare) as fleet:
        password = group["vars"]["brulee_redis_password"]
        assert fleet.redis_settings["requirepass"] == password
        assert CONTROLLER_ADDR in fleet.redis_settings["bind"].split()
        for host, env in rendered.items():  # the Redis host itself over loopback
            where = "127.0.0.1" if host == redis_host else CONTROLLER_ADDR
            assert env["REDIS_URL"] == f"redis://:{password}@{where}:6379/0", (host, env)
        assert sorted(fleet.workers().values()) == sorted(hosts)
        caps = {d: v["cap_bytes"] for d, v in fleet.cache()["devices"].items()}
        assert caps == {h: int(env["BRULEE_MEMORY_CAP"]) for h, env in rendered.items()}
        assert caps["nuc-1"] == group["hosts"]["nuc-1"]["brulee_memory_cap"]
        listing = fleet.get("/system/functions", headers={"Authorization": f"Bearer {fleet.token}"})
        body, ctype = build_payloads(listing.json())["digits-cnn"]
        resp = fleet.submit("POST", "/function/digits-cnn", data=body,
                            headers={"Content-Type": ctype}).result()  # fmt: skip
        assert resp.status_code == 200 and device_of(fleet, resp) in hosts, resp.text
