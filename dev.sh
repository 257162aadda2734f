#!/usr/bin/env bash
# Set up everything mesh_collab needs on a fresh machine, then run one job.
#
#   ./dev.sh demo    the main job: two sites (gateway + JupyterLab each), see the README
#   ./dev.sh test    the whole test suite
#   ./dev.sh bench   the benchmarks: ./dev.sh bench [fanout|traces|...] (benchmarks/README.md)
#   ./dev.sh setup   only the set-up
#
# The set-up is idempotent and quick when nothing changed: a virtualenv in .venv with the
# project installed in editable mode plus its test extras (re-installed when pyproject.toml
# changes).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --upgrade pip
    fi
    # Debian packages, before pip: browser tests drive Debian's Chromium (test tools may not
    # download browsers); the FUSE mount needs fuse3 (fusermount3), and pyfuse3 builds
    # against libfuse3-dev with pkg-config, gcc and Python's headers.
    local debs=()
    command -v chromium >/dev/null 2>&1 || debs+=(chromium)
    command -v fusermount3 >/dev/null 2>&1 || debs+=(fuse3)
    pkg-config --exists fuse3 2>/dev/null || debs+=(libfuse3-dev pkg-config)
    command -v gcc >/dev/null 2>&1 || debs+=(gcc)
    local include
    include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$include/Python.h" ] || debs+=(python3-dev)
    if [ ${#debs[@]} -gt 0 ]; then
        local sudo=()
        [ "$(id -u)" = 0 ] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}"
    fi
    local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/pip" install --quiet -e ".[test]"
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
    # The tests' real Yjs peer (npm yjs + y-websocket), from the committed lockfile.
    if [ ! -f tests/node/node_modules/.package-lock.json ] \
        || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
        (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
    fi
    # JupyterHub's proxy (configurable-http-proxy) for the hub site, from its lockfile.
    if [ ! -f deploy/proxy/node_modules/.package-lock.json ] \
        || [ deploy/proxy/package-lock.json -nt deploy/proxy/node_modules/.package-lock.json ]; then
        (cd deploy/proxy && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) setup ;;
    demo)
        setup
        exec "$VENV/bin/mesh-collab" demo "$@"
        ;;
    test)
        setup
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        setup
        # ./dev.sh bench [script] [args]: a script of benchmarks/ (default cs3_gateway).
        script=cs3_gateway
        if [ $# -gt 0 ] && [[ $1 != _* ]] && [ -f "benchmarks/$1.py" ]; then script=$1; shift; fi
        exec "$VENV/bin/python" "benchmarks/$script.py" "$@"
        ;;
    *)
        echo "usage: $0 demo|test|bench|setup [args...]" >&2
        exit 2
        ;;
esac
