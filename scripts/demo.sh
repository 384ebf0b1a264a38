#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job end to end on built-in demo data.
# Usage: bash scripts/demo.sh [OUTPUT_FOLDER [OPTIONS]]   (default: demo_run; options: scripts/run_demo.py --help)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VOLSEG_VENV:-.venv}"
exec "$VENV/bin/python" scripts/run_demo.py --out "${1:-demo_run}" "${@:2}"
