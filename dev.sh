#!/usr/bin/env bash
# Set up everything mesh_collab needs on a fresh machine, then run one job.
#
#   ./dev.sh demo    the main job (today: the embedded CS3 gateway, in the foreground)
#   ./dev.sh test    the whole test suite
#   ./dev.sh bench   the benchmarks (see benchmarks/README.md)
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
    local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/pip" install --quiet -e ".[test]"
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) setup ;;
    demo)
        setup
        exec "$VENV/bin/mesh-collab" gateway --root "${MESH_COLLAB_ROOT:-./mesh-collab-data}" "$@"
        ;;
    test)
        setup
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        setup
        exec "$VENV/bin/python" benchmarks/cs3_gateway.py "$@"
        ;;
    *)
        echo "usage: $0 demo|test|bench|setup [args...]" >&2
        exit 2
        ;;
esac
