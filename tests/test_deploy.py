"""Deployment: the Ansible playbook really installs brulee (into a scratch prefix on this host),
the agent starts from what it installed, the units pass ``systemd-analyze verify``, and the
container files are well formed.

CI has no devices, no running systemd and no Docker engine, so: the playbook runs against
``localhost`` over a local connection with ``brulee_prefix`` set and services unmanaged; the
agent is then started exactly as the installed units would start it (their ``ExecStart`` lines
with their ``EnvironmentFile``), against this test's own ``redis-server``; the Dockerfile and the
compose file are parsed, not built.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from agent.redis_server import RedisServer, free_port
from agent.up import stop_processes

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ANSIBLE = DEPLOY / "ansible"
BIN = Path(sys.executable).parent
PACKAGE_FILES = (
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "agent",
    "functions",
    "loadgen",
    "models",
)
UNITS = ("brulee.slice", "brulee-gateway.service", "brulee-worker@.service")


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-tmp"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def playbook(inventory: Path, tmp: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / "site.yml"), *args],
        env=ansible_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"ansible-playbook failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout + proc.stderr


def recap(output: str) -> dict[str, int]:
    match = re.search(r"^localhost\s+:\s+(.*)$", output, re.MULTILINE)
    assert match, f"no PLAY RECAP line for localhost in:\n{output[-2000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def local_hostvars(test_models: Path, **more: object) -> dict:
    """Settings for a run on this host: local connection, no root, no system packages, no
    services (CI has no systemd), the test models; ``more`` adds or overrides."""
    return dict(
        ansible_connection="local",
        ansible_python_interpreter=sys.executable,
        ansible_become=False,
        brulee_create_user=False,
        brulee_install_system_packages=False,
        brulee_manage_services=False,
        brulee_models_src=str(test_models),
        **more,
    )


def write_inventory(path: Path, **hostvars: object) -> Path:
    path.write_text(yaml.safe_dump({"brulee": {"hosts": {"localhost": hostvars}}}))
    return path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, test_models: Path) -> dict:
    """One real run of site.yml into a scratch prefix; its output and paths."""
    tmp = tmp_path_factory.mktemp("deploy")
    prefix = tmp / "root"
    # A snapshot of the package's sources: both runs ship the same code even while the
    # checkout is being edited (the playbook builds its wheel from brulee_source).
    source = tmp / "source"
    for name in PACKAGE_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    settings = local_hostvars(
        test_models,
        brulee_prefix=str(prefix),
        brulee_user=getpass.getuser(),
        # the venv is made by the interpreter this environment was made from
        brulee_python=getattr(sys, "_base_executable", sys.executable),
        brulee_memory_cap=150_000_000,
        brulee_workers=1,
        brulee_gateway_processes=1,
        brulee_bind=f"127.0.0.1:{free_port()}",
        brulee_redis_port=free_port(),  # the test's own redis-server, never the one on 6379
        brulee_device="deploy-test",
        brulee_credentials_dir=str(tmp / "credentials"),
        brulee_source=str(source),
    )
    inventory = write_inventory(tmp / "inventory.yml", **settings)
    t0 = time.monotonic()
    output = playbook(inventory, tmp)
    return {
        "tmp": tmp,
        "prefix": prefix,
        "inventory": inventory,
        "settings": settings,
        "output": output,
        "seconds": time.monotonic() - t0,
    }


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def read_unit(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, by key (repeated keys keep every value)."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def exec_start(unit: Path, instance: str = "") -> tuple[list[str], dict[str, str], Path]:
    """The command, environment and directory systemd would run ``unit`` with.

    Follows systemd's rules for what the units use: ``Environment=`` first, then
    ``EnvironmentFile=`` overriding it; ``${VAR}`` inside a word expands in place; ``%i`` is the
    instance and ``%H`` the host name.
    """
    keys = read_unit(unit)
    specifiers = {"%i": instance, "%H": socket.gethostname()}

    def spec(text: str) -> str:
        return re.sub(r"%[iH]", lambda m: specifiers[m.group(0)], text)

    env: dict[str, str] = {}
    for assignment in keys.get("Environment", []):
        key, _, value = spec(assignment).partition("=")
        env[key] = value
    for env_file in keys["EnvironmentFile"]:
        env.update(read_env_file(Path(env_file)))
    (command,) = keys["ExecStart"]
    argv = [
        re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), spec(word))
        for word in shlex.split(command)
    ]
    return argv, env, Path(keys["WorkingDirectory"][0])


def test_playbook_installs_brulee_into_the_prefix(deployment: dict) -> None:
    prefix: Path = deployment["prefix"]
    counts = recap(deployment["output"])
    assert counts["failed"] == 0 and counts["changed"] > 0
    venv = prefix / "opt/brulee/venv"
    version = subprocess.run(
        [str(venv / "bin/brulee"), "--version"], capture_output=True, text=True, check=True
    )
    assert "brulee" in version.stdout
    # the base package only: the device venv has the interpreter but never TensorFlow
    probe = (
        "import importlib.util as u; "
        "print(bool(u.find_spec('tensorflow')), bool(u.find_spec('tflite_runtime')))"
    )
    found = subprocess.run(
        [str(venv / "bin/python"), "-c", probe], capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == ["False", "True"]
    models = prefix / "opt/brulee/models"
    catalog = json.loads((models / "catalog.json").read_text())
    assert {m["file"] for m in catalog["models"]} <= {p.name for p in models.glob("*.tflite")}
    env = read_env_file(prefix / "etc/brulee/brulee.env")
    settings = deployment["settings"]
    assert env["BRULEE_MEMORY_CAP"] == str(settings["brulee_memory_cap"])
    assert env["REDIS_URL"] == f"redis://127.0.0.1:{settings['brulee_redis_port']}/0"
    assert env["BRULEE_MODELS"] == str(models)
    assert env["BRULEE_DEVICE"] == "deploy-test"
    # a management token generated on the controller, kept for the next runs
    token = (deployment["tmp"] / "credentials/localhost.token").read_text().split()[0]
    assert env["BRULEE_TOKEN"] == token and len(token) == 32
    assert (prefix / "etc/brulee/brulee.env").stat().st_mode & 0o777 == 0o640
    for unit in UNITS:
        assert (prefix / "etc/systemd/system" / unit).is_file()
    print(f"first playbook run: {deployment['seconds']:.1f} s")


def test_memory_limits_follow_the_cap(deployment: dict) -> None:
    units = deployment["prefix"] / "etc/systemd/system"
    cap = deployment["settings"]["brulee_memory_cap"]
    baseline = 96 * 2**20
    assert read_unit(units / "brulee-worker@.service")["MemoryMax"] == [str(cap + baseline)]
    # one worker and one gateway process in this deployment
    assert read_unit(units / "brulee.slice")["MemoryMax"] == [str(cap + baseline + baseline)]
    assert read_unit(units / "brulee-gateway.service")["MemoryMax"] == [str(baseline)]


def test_second_run_changes_nothing(deployment: dict) -> None:
    output = playbook(deployment["inventory"], deployment["tmp"])
    counts = recap(output)
    assert counts["failed"] == 0
    assert counts["changed"] == 0, output[-3000:]


def test_agent_starts_from_the_installed_units_and_serves_a_function(deployment: dict) -> None:
    prefix: Path = deployment["prefix"]
    units = prefix / "etc/systemd/system"
    settings = deployment["settings"]
    gateway_argv, gateway_env, workdir = exec_start(units / "brulee-gateway.service")
    worker_argv, worker_env, _ = exec_start(units / "brulee-worker@.service", instance="1")
    assert gateway_argv[0] == str(prefix / "opt/brulee/venv/bin/gunicorn")
    assert worker_argv[:2] == [str(prefix / "opt/brulee/venv/bin/brulee"), "worker"]
    base = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
    procs: list[subprocess.Popen] = []
    with RedisServer(deployment["tmp"] / "redis", port=settings["brulee_redis_port"]):
        try:
            for argv, env in ((worker_argv, worker_env), (gateway_argv, gateway_env)):
                procs.append(
                    subprocess.Popen(
                        argv,
                        env={**base, **env},
                        cwd=workdir,  # never the checkout: the installed package must serve
                        stdout=subprocess.DEVNULL,
                        stderr=open(deployment["tmp"] / f"{Path(argv[0]).name}.log", "w"),  # noqa: SIM115
                        start_new_session=True,
                    )
                )
            url = f"http://{settings['brulee_bind']}"
            deadline = time.monotonic() + 60
            while True:
                for proc in procs:
                    assert proc.poll() is None, f"{proc.args[0]} exited: {logs(deployment)}"
                try:
                    health = requests.get(f"{url}/healthz", timeout=2)
                    if health.status_code == 200 and health.json()["workers"] >= 1:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, f"no worker in 60 s: {logs(deployment)}"
                time.sleep(0.3)
            body = {"inputs": [[[[0.5]] * 8] * 8]}  # digits-cnn: 1x8x8x1 float32
            first = requests.post(f"{url}/function/digits-cnn", json=body, timeout=60)
            assert first.status_code == 200, first.text
            assert len(first.json()["outputs"][0]) == 10
            assert first.headers["X-Cache"] == "miss"
            second = requests.post(f"{url}/function/digits-cnn", json=body, timeout=60)
            assert second.status_code == 200 and second.headers["X-Cache"] == "hit"
            assert second.json()["outputs"] == first.json()["outputs"]
            # the management token the playbook generated is the one the gateway accepts
            token = gateway_env["BRULEE_TOKEN"]
            listed = requests.get(
                f"{url}/system/functions", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            assert listed.status_code == 200, listed.text
            assert "digits-cnn" in listed.text
            denied = requests.get(f"{url}/system/functions", timeout=10)
            assert denied.status_code in (401, 403)
        finally:
            stop_processes(procs, timeout=20)


def logs(deployment: dict) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-2000:]}" for p in deployment["tmp"].glob("*.log")
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_installed_units_pass_systemd_analyze_verify(deployment: dict, tmp_path: Path) -> None:
    """The units as installed (their ExecStart binaries exist in the prefix) verify clean."""
    units = deployment["prefix"] / "etc/systemd/system"
    # verify wants a concrete instance of the template; it is the same file under that name
    shutil.copy(units / "brulee-worker@.service", tmp_path / "brulee-worker@1.service")
    shutil.copy(units / "brulee.slice", tmp_path / "brulee.slice")
    shutil.copy(units / "brulee-gateway.service", tmp_path / "brulee-gateway.service")
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a bad key, a bad limit and a missing binary are reported."""
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nExecStart=/nonexistent/brulee\nMemoryMax=lots\nFoo=1\n")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "Invalid memory limit" in proc.stderr and "Unknown key" in proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_shipped_units_verify_except_for_the_missing_install(tmp_path: Path) -> None:
    """deploy/systemd/ points at /opt/brulee, absent here: that must be the only complaint."""
    for unit in UNITS:
        name = unit.replace("@.", "@1.")
        shutil.copy(DEPLOY / "systemd" / unit, tmp_path / name)
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.glob("brulee*")))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    complaints = [line for line in proc.stderr.splitlines() if line.strip()]
    allowed = re.compile(r"Command /opt/brulee/venv/bin/\w+ is not executable")
    assert complaints and all(allowed.search(line) for line in complaints), proc.stderr


def test_shipped_units_are_the_playbook_rendering(tmp_path: Path) -> None:
    """deploy/systemd/ is render-units.yml's output: the templates are the one source."""
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            str(ANSIBLE / "render-units.yml"),
            "-e",
            f"brulee_render_dir={tmp_path}",
        ],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    for name in (*UNITS, "brulee.env"):
        assert (tmp_path / name).read_text() == (DEPLOY / "systemd" / name).read_text(), name


def test_playbook_syntax_check(tmp_path: Path) -> None:
    inventory = ANSIBLE / "inventory.example.yml"
    for book in ("site.yml", "render-units.yml", "render-fleet.yml"):
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(inventory), book],
            env=ansible_env(tmp_path),
            cwd=ANSIBLE,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "-c", ".ansible-lint", "--nocolor", "."],
        env=ansible_env(tmp_path),
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


def test_bad_memory_cap_is_refused_with_a_clear_message(tmp_path: Path, test_models: Path) -> None:
    inventory = write_inventory(
        tmp_path / "inventory.yml",
        **local_hostvars(
            test_models, brulee_prefix=str(tmp_path / "root"), brulee_memory_cap="lots"
        ),
    )
    output = playbook(inventory, tmp_path, check=False)
    assert recap(output)["failed"] == 1
    assert 'memory cap "lots"' in output
    assert not (tmp_path / "root").exists()  # refused before installing anything


def test_shared_redis_without_a_password_is_refused(tmp_path: Path, test_models: Path) -> None:
    inventory = write_inventory(
        tmp_path / "inventory.yml",
        **local_hostvars(
            test_models, brulee_prefix=str(tmp_path / "root"), brulee_redis_shared=True
        ),
    )
    output = playbook(inventory, tmp_path, check=False)
    assert recap(output)["failed"] == 1
    assert "needs brulee_redis_password" in output


def test_fleet_devices_share_the_first_devices_redis(tmp_path: Path, test_models: Path) -> None:
    """Two "devices" on this host: dev-a's Redis is shared, dev-b points at it (config only)."""
    common = local_hostvars(
        test_models,
        brulee_user=getpass.getuser(),
        brulee_credentials_dir=str(tmp_path / "credentials"),
    )
    password = "s3cret-" + "x" * 20
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "brulee": {
                    "hosts": {
                        "dev-b": {"brulee_prefix": str(tmp_path / "b")},
                        "dev-a": {
                            "brulee_prefix": str(tmp_path / "a"),
                            "brulee_redis_shared": True,
                        },
                    },
                    "vars": {
                        **common,
                        "brulee_redis_host": "dev-a",
                        "brulee_redis_password": password,
                    },
                }
            }
        )
    )
    output = playbook(inventory, tmp_path, "--skip-tags", "package")
    assert "failed=0" in output.split("PLAY RECAP")[-1]
    # the shared Redis's device goes first, then the rest
    assert output.index("ok: [dev-a]", output.index("PLAY [Deploy")) < output.index(
        "[dev-b]", output.index("PLAY [Deploy")
    )
    env_a = read_env_file(tmp_path / "a/etc/brulee/brulee.env")
    env_b = read_env_file(tmp_path / "b/etc/brulee/brulee.env")
    assert env_a["REDIS_URL"] == f"redis://:{password}@127.0.0.1:6379/0"
    assert env_b["REDIS_URL"].startswith(f"redis://:{password}@")
    # dev-b reaches dev-a's Redis at dev-a's network address (its default IPv4), not loopback
    host = re.fullmatch(r"redis://:[^@]+@([\d.]+):6379/0", env_b["REDIS_URL"])
    assert host and not host.group(1).startswith("127."), env_b["REDIS_URL"]
    gateway_a = read_unit(tmp_path / "a/etc/systemd/system/brulee-gateway.service")
    gateway_b = read_unit(tmp_path / "b/etc/systemd/system/brulee-gateway.service")
    assert "redis-server.service" in gateway_a["Wants"][0]
    assert "redis-server.service" not in gateway_b["Wants"][0]


def test_dockerfile_stages_are_well_formed() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DEPLOY / "docker" / "Dockerfile"))
    instructions = parser.structure
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    assert parser.is_multistage
    assert parser.parent_images == ["python:3.11-slim-bookworm"] * 2
    # the last stage runs as a named non-root user, set after every RUN
    last_from = max(i["startline"] for i in instructions if i["instruction"] == "FROM")
    runtime = [i for i in instructions if i["startline"] >= last_from]
    users = [i for i in runtime if i["instruction"] == "USER"]
    assert users and users[-1]["value"].split(":")[0] not in ("root", "0")
    last_run = max(i["startline"] for i in runtime if i["instruction"] == "RUN")
    assert users[-1]["startline"] > last_run
    # the runtime stage takes wheels from the build stage, not from a compiler of its own
    assert any("from=build" in i["value"] for i in runtime if i["instruction"] == "RUN")
    assert "zoo" not in " ".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    assert any(i["instruction"] == "HEALTHCHECK" for i in runtime)
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :].count("!agent/") == 1  # everything else stays out


def test_compose_file_has_agent_and_redis_with_healthchecks() -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"agent", "redis"}
    for service in services.values():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    agent = services["agent"]
    assert agent["depends_on"]["redis"]["condition"] == "service_healthy"
    assert agent["environment"]["REDIS_URL"].startswith("redis://:")  # with a password
    assert "--requirepass" in services["redis"]["command"]
    assert "ports" not in services["redis"]  # Redis is not published on the host
    build = agent["build"]
    assert (DEPLOY / "docker" / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "docker" / "Dockerfile"
    )
