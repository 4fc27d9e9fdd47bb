#!/usr/bin/env bash
# One entry point for a fresh machine with only Python 3.11:
#   bash scripts/dev.sh demo   -> set up .venv, fetch the sample data, run bundle inference on it
#   bash scripts/dev.sh test   -> set up .venv, fetch the sample data, run the whole test suite
# Set-up is idempotent: a second run reuses .venv and the data cache ($MONAI_FOVEA_DATA, default ~/.cache/monai_fovea).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    local pip="$VENV/bin/python -m pip -q --disable-pip-version-check"
    if [ ! -f "$VENV/.installed" ] || [ setup.cfg -nt "$VENV/.installed" ]; then
        $pip install --upgrade pip setuptools wheel
        # The CPU wheel of torch first (a local wheel on these machines): with it in place nothing below can
        # pull the multi-GB CUDA build. GPU users: see README "GPU install".
        if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
            $pip install "torch==${TORCH_VERSION:-2.13.0}"
        fi
        $pip install -e ".[all,dev]"
        touch "$VENV/.installed"
    fi
    "$VENV/bin/python" -m monai_fovea.data.samples fetch --all
}

case "${1:-}" in
    demo)
        setup
        "$VENV/bin/python" -m monai_fovea.apps.demo "${@:2}"
        ;;
    test)
        setup
        # -n 2: both cores (CI has two). Exit code 5 ("no tests collected") is a failure, never hidden.
        set +e
        "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" "${@:2}"
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            echo "pytest collected no tests: failing" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    setup)
        setup
        ;;
    *)
        echo "usage: bash scripts/dev.sh demo|test|setup [args]" >&2
        exit 2
        ;;
esac
