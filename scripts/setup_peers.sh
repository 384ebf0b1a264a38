#!/usr/bin/env bash
# Install the peers that benchmarks compare against (nnU-Net v2) in their own virtual
# environment, ../peers/nnunet, never into volseg's. Usage: bash scripts/setup_peers.sh [PEERS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${1:-../peers}"
mkdir -p "$PEERS"
if [ ! -x "$PEERS/nnunet/bin/python" ]; then
    python3 -m venv "$PEERS/nnunet"
fi
"$PEERS/nnunet/bin/python" -m pip install --quiet --upgrade pip
# the same torch as volseg's environment, also against dependencies that would pull a newer
# (CUDA) build: a constraints file pins it for the whole resolution
CONSTRAINTS="$PEERS/nnunet/constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"
"$PEERS/nnunet/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "torch==2.13.0" nnunetv2
"$PEERS/nnunet/bin/python" -c "import torch, sys; v = torch.__version__; print('peer torch', v); sys.exit(not v.startswith('2.13.0'))"
echo "nnU-Net v2 ready: $PEERS/nnunet/bin/python"
