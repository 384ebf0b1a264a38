#!/usr/bin/env bash
# Install volseg into ./.venv (created if missing). Installs a CPU build of torch first
# when the environment has no torch, so that a fresh install is not a multi-GB CUDA download.
# Usage: bash scripts/setup.sh   (VOLSEG_VENV=/path to use another environment)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VOLSEG_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing a CPU build of torch"
    $PIP install --quiet "torch==2.13.0" \
        || $PIP install --quiet torch --index-url https://download.pytorch.org/whl/cpu
fi
if ! "$VENV/bin/python" -c "import volseg, monai, SimpleITK, batchgenerators, cc3d, nilearn, pytest" >/dev/null 2>&1 \
   || [ setup.cfg -nt "$VENV/.volseg-installed" ]; then
    echo "[setup] installing volseg and its dependencies"
    $PIP install --quiet -e ".[test,anatomy]"
    touch "$VENV/.volseg-installed"
fi
# the CPU runtimes of the forward pass (OpenVINO, ONNX Runtime), where wheels exist for this machine;
# torch stays pinned, and prediction uses torch without them
if ! "$VENV/bin/python" -c "import openvino, onnxruntime, onnx" >/dev/null 2>&1; then
    echo "[setup] installing the CPU runtimes (volseg[cpu-fast])"
    echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')" > "$VENV/.torch-pin"
    $PIP install --quiet -c "$VENV/.torch-pin" -e ".[cpu-fast]" \
        || echo "[setup] no OpenVINO / ONNX Runtime for this machine: the network runs on torch"
fi
echo "[setup] ready: $VENV/bin/volseg"
