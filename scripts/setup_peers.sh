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
"$PEERS/nnunet/bin/python" -c "import torch" 2>/dev/null || "$PEERS/nnunet/bin/python" -m pip install --quiet "torch==2.13.0"
"$PEERS/nnunet/bin/python" -m pip install --quiet nnunetv2
echo "nnU-Net v2 ready: $PEERS/nnunet/bin/python"
