#!/usr/bin/env bash
# The two commands of the README, and the set-up they share.
#
#   ./brulee.sh demo   set up, then run the main job (build and profile the edge model set, start
#                      the agent on it, replay the Azure trace, compare with the simulator)
#   ./brulee.sh test   set up, then run the whole test suite (what CI runs)
#
# Set-up is idempotent: system packages only when missing (python3-venv, redis-server, and for
# the tests chromium, the headless browser the status page is tested in, via apt-get; never a
# browser download), a virtual environment in .venv, brulee installed into it in editable mode. The test
# suite also keeps a second environment, .venv-litert, where the interpreter smoke tests run
# with ai-edge-litert instead of tflite-runtime.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then
        if [ -t 0 ]; then sudo "$@"; else sudo -n "$@" || die "need root for: $* (run it once by hand)"; fi
    else die "need root for: $* (no sudo here)"; fi
}

# system_packages [COMMAND...]: install what is missing; each COMMAND names its Debian package.
system_packages() {
    local missing=() cmd
    command -v "$PYTHON" >/dev/null || missing+=(python3)
    if command -v "$PYTHON" >/dev/null && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        missing+=(python3-venv)
    fi
    command -v redis-server >/dev/null || missing+=(redis-server)
    for cmd in "$@"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    if [ ${#missing[@]} -gt 0 ]; then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
        say "installing system packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# venv DIR EXTRAS: make DIR a virtual environment with brulee[EXTRAS] installed (editable).
venv() {
    local dir=$1 extras=$2 stamp
    stamp="$dir/.brulee-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)-${extras//,/-}"
    [ -f "$stamp" ] && return 0
    say "installing brulee[$extras] into $dir"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip setuptools wheel
    "$dir/bin/python" -m pip install -q -e ".[$extras]"
    rm -f "$dir"/.brulee-*
    touch "$stamp"
}

# The second environment: the same code on ai-edge-litert (no tflite-runtime, no TensorFlow).
litert_venv() {
    local dir=.venv-litert stamp
    stamp="$dir/.brulee-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)-litert"
    [ -f "$stamp" ] && return 0
    say "installing the ai-edge-litert environment into $dir"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip setuptools wheel
    "$dir/bin/python" -m pip install -q ai-edge-litert numpy click tqdm tabulate pytest pytest-timeout
    "$dir/bin/python" -m pip install -q --no-deps -e .
    rm -f "$dir"/.brulee-*
    touch "$stamp"
}

cmd_demo() {
    system_packages
    venv .venv zoo,loadtest,sim
    local zoo=${BRULEE_ZOO:-zoo/edge}
    say "building the edge model set into $zoo (first run: a few minutes)"
    .venv/bin/brulee models build --set edge --out "$zoo"
    if [ ! -f "$zoo/profiles.json" ] || [ "$zoo/catalog.json" -nt "$zoo/profiles.json" ]; then
        say "profiling every model in a fresh process"
        .venv/bin/brulee models profile --models "$zoo" --out "$zoo/profiles.json" \
            --plot "$zoo/profile.png" --compare loadgen/data/models.m5.json
    else
        .venv/bin/brulee models table "$zoo/profiles.json" --compare loadgen/data/models.m5.json
    fi
    say "starting the agent on $zoo and replaying the real Azure 2019 rows (a day in 3 minutes)"
    .venv/bin/brulee testbed --models "$zoo" --out out/demo "$@"
}

cmd_test() {
    system_packages chromium  # tests/test_status_page.py drives it through Playwright
    venv .venv zoo,loadtest,test
    litert_venv
    export BRULEE_TEST_MODELS="$ROOT/.cache/test-models"
    say "lint (ruff)"
    .venv/bin/ruff check .
    say "test suite (tflite-runtime)"
    .venv/bin/python -m pytest "$@"
    say "interpreter smoke tests again, on ai-edge-litert"
    BRULEE_RUNTIME=ai-edge-litert .venv-litert/bin/python -m pytest -m runtime -q tests/test_runtime.py
}

case "${1:-}" in
    demo) shift; cmd_demo "$@" ;;
    test) shift; cmd_test "$@" ;;
    *) echo "usage: $0 demo | test [pytest args]" >&2; exit 2 ;;
esac
