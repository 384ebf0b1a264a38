#!/usr/bin/env bash
# Everything a GPU machine must verify of volseg, in one run of at most CHECK_BUDGET_S seconds
# (default 420), results written to OUT_DIR.
#
#   bash benchmarks/gpu/check.sh OUT_DIR [--quick] [--steps setup,env,tests,bench,demo,slab]
#   bash benchmarks/gpu/check.sh --fetch-wheels DIR     (on a machine with a package registry: the
#       dependencies a GPU image lacks, as cp312 manylinux wheels (WHEEL_PYTHON=3.12), about 61 MiB)
#
# Steps (each under its own time limit; the report always runs):
#   setup  a virtual environment with volseg installed from this working tree (editable, no deps),
#          its dependencies from a wheel folder or the registry, torch as described below
#   env    versions: GPU, driver, CUDA, cuDNN, torch, Triton, MONAI, Python, CPU
#   tests  GPU: the suite's gpu-marked tests (compiled Triton kernels against the torch references,
#          a CUDA train step with mixed precision, CUDA predict in full and slab mode);
#          CPU: the kernel tests under TRITON_INTERPRET=1, and tests/gpu (which skip)
#   bench  sliding window, volseg (Triton, torch) against MONAI: GPU: 384×384×256 voxels,
#          100 classes, patch 128³; CPU: a reduced volume, torch backend and MONAI only
#   demo   the MS demo's 3d_fullres plan on a demo case (volseg, MONAI), then a short training of
#          it: max_memory_allocated against the planner's estimate (CPU: 3d_cpu, a dry run)
#   slab   full, slab and automatic mode under a GPU memory cap around the out-of-memory
#          boundary (CPU: a dry run of the code)
#   (slab runs before demo: it is the shorter of the two)
#   report OUT_DIR/results.json and OUT_DIR/results.md (printed last); full log in OUT_DIR/check.log,
#          pytest's output in OUT_DIR/tests.log
#
# Environment:
#   VOLSEG_VENV     use this existing environment as it is (nothing is installed, except volseg
#                   itself, editable, when it is not importable there)
#   CHECK_VENV      where the environment is created otherwise (default /tmp/volseg-gpu-venv)
#   PYTHON          base interpreter (default python3). When its torch is a CUDA build (a GPU
#                   image's), the new environment sees its packages (torch, Triton, numpy, ...)
#                   and adds only what is missing; else torch==2.13.0 comes from the registry
#                   (a CUDA build on Linux x86-64 from PyPI, the CPU build where the index serves that)
#   CHECK_BASE_PACKAGES  1: the new environment sees the base interpreter's packages whatever its
#                   torch; 0: never; auto (default): when its torch is a CUDA build
#   VOLSEG_WHEELS   folder of wheels installed offline (--no-index --no-deps); default
#                   build/gpu_wheels when it exists (made by --fetch-wheels); else the registry
#   CHECK_DEVICE    auto (default) | cpu: take the CPU path even where a GPU is present
#   CHECK_BUDGET_S  wall-clock budget of the whole check in seconds (default 420; --quick 240)
#   CHECK_CHILD_TIMEOUT_S  limit of one measuring process (default 120)
#   CHECK_WORK      working folder (default: a new one under /tmp, removed at the end unless
#                   CHECK_KEEP_WORK=1)
#
# A machine without a package registry needs the wheels: fetch them where a registry is reachable
# (--fetch-wheels build/gpu_wheels) and bring that folder along with the working tree.
#
# Exit status: 0 when every step that ran succeeded (also when the GPU parts were skipped for
# want of a GPU: the report says which), 1 otherwise, 2 on a usage error.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH="$ROOT/benchmarks/gpu/bench_gpu.py"
# runtime dependencies a GPU image may lack, at the versions of the CPU test environment
WHEEL_PINS="simpleitk==2.5.7 monai==1.6.1 nibabel==5.4.2 batchgenerators==0.25.5 connected-components-3d==4.1.1
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }

if [ "${1:-}" = "--fetch-wheels" ]; then
    [ -n "${2:-}" ] || usage
    mkdir -p "$2"
    # shellcheck disable=SC2086
    "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$2" $WHEEL_PINS || exit 1
    du -sh "$2"
    exit 0
fi

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
OUT="$1"; shift
QUICK=0
STEPS="setup,env,tests,bench,demo,slab"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --steps) STEPS="$2"; shift ;;
        -h|--help) usage ;;
        *) echo "unknown option $1" >&2; usage ;;
    esac
    shift
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${CHECK_WORK:-$(mktemp -d /tmp/volseg-gpu-check.XXXXXX)}"
mkdir -p "$WORK"
LOG="$OUT/check.log"
: >"$LOG"
: >"$WORK/steps.tsv"
if [ "$QUICK" = 1 ]; then BUDGET="${CHECK_BUDGET_S:-240}"; else BUDGET="${CHECK_BUDGET_S:-420}"; fi
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
cd "$ROOT" || exit 1

log() { echo "[check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/steps.tsv"; }
want() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# run_step NAME LIMIT_S NOTE COMMAND...: runs COMMAND under the smaller of LIMIT_S and what is left of
# the budget (keeping 25 s for the report); records ok / failed / timeout / skipped.
FAILED=0
run_step() {
    local name="$1" limit="$2" note="$3"; shift 3
    if ! want "$name"; then record "$name" skipped 0 "not in --steps"; return 0; fi
    local left=$((DEADLINE - $(date +%s) - 25))
    if [ "$left" -lt 15 ]; then
        log "$name: skipped, the time budget of ${BUDGET} s is spent"
        record "$name" skipped 0 "time budget spent"; FAILED=1; return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "== $name (limit ${limit} s): $note"
    local t0 rc status
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local dt
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case "$rc" in
        0) status=ok ;;
        124|137) status=timeout; note="$note; stopped after ${limit} s"; FAILED=1 ;;
        *) status=failed; note="$note; exit status $rc"; FAILED=1 ;;
    esac
    log "$name: $status in ${dt} s"
    record "$name" "$status" "$dt" "$note"
}

# --- setup ------------------------------------------------------------------------------------------------
setup_env() {
    set -e
    local py="${PYTHON:-python3}" venv pybin wheels
    if [ -n "${VOLSEG_VENV:-}" ]; then
        pybin="$VOLSEG_VENV/bin/python"
        [ -x "$pybin" ] || { echo "VOLSEG_VENV=$VOLSEG_VENV has no bin/python"; return 1; }
        echo "reusing $VOLSEG_VENV as it is"
    else
        venv="${CHECK_VENV:-/tmp/volseg-gpu-venv}"
        pybin="$venv/bin/python"
        local link="${CHECK_BASE_PACKAGES:-auto}"
        if [ "$link" = auto ]; then
            if "$py" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then link=1; else link=0; fi
        fi
        if [ "$link" = 1 ]; then
            echo "using the packages of $("$py" -c 'import sys; print(sys.executable)') (torch $("$py" -c 'import torch; print(torch.__version__)'))"
            "$py" -m venv --clear --without-pip "$venv"
            local sp
            sp="$("$pybin" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
            "$py" -c 'import site, sys
for d in site.getsitepackages():
    print(f"import site; site.addsitedir({d!r})")' >"$sp/_volseg_base.pth"
            "$pybin" -m pip --version
        else
            echo "base interpreter has no CUDA torch: a fresh environment, torch==2.13.0 from the registry"
            "$py" -m venv --clear "$venv"
            "$pybin" -m pip install --quiet --upgrade pip || true
            "$pybin" -m pip install --quiet "torch==2.13.0"
        fi
        wheels="${VOLSEG_WHEELS:-}"
        if [ -z "$wheels" ] && [ -d "$ROOT/build/gpu_wheels" ]; then wheels="$ROOT/build/gpu_wheels"; fi
        if [ -n "$wheels" ]; then
            echo "installing the wheels in $wheels (offline, no dependencies)"
            "$pybin" -m pip install --quiet --no-index --no-deps --no-compile "$wheels"/*.whl
        else
            echo "installing volseg (editable) and its missing dependencies from the registry"
            "$pybin" -m pip install --quiet -e "$ROOT[test]"  # what is already there is kept
        fi
    fi
    if ! (cd /tmp && "$pybin" -c 'import volseg') 2>/dev/null; then
        echo "installing volseg from $ROOT (editable, no dependencies)"
        if ! "$pybin" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"; then
            echo "editable install failed: putting $ROOT on the environment's path instead"
            echo "$ROOT" >"$("$pybin" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_volseg_src.pth"
        fi
    fi
    echo "$pybin" >"$WORK/python"
    (cd /tmp && "$pybin" - <<'EOF'
import importlib, sys
need = ["torch", "volseg", "monai", "SimpleITK", "nibabel", "batchgenerators", "cc3d", "jsonschema", "scipy",
        "numpy", "matplotlib", "tqdm", "pytest"]
missing = []
for name in need + ["triton"]:
    try:
        m = importlib.import_module(name)
        print(f"  {name:16s} {getattr(m, '__version__', '')}  {getattr(m, '__file__', '')}")
    except Exception as e:
        print(f"  {name:16s} MISSING ({type(e).__name__}: {e})")
        if name in need:
            missing.append(name)
import torch
print(f"  torch CUDA build {torch.version.cuda}, CUDA available: {torch.cuda.is_available()}")
sys.exit(f"missing: {', '.join(missing)}" if missing else 0)
EOF
    )
}
export -f setup_env
export ROOT WORK
run_step setup 240 "environment and install" bash -c setup_env

if [ -s "$WORK/python" ]; then PY_ENV="$(cat "$WORK/python")"; else PY_ENV="${PYTHON:-python3}"; fi
GPU=0
if [ "${CHECK_DEVICE:-auto}" != "cpu" ] && "$PY_ENV" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    GPU=1
fi
export CHECK_DEVICE="${CHECK_DEVICE:-auto}"
if [ "$GPU" = 1 ]; then DEV=cuda; else DEV=cpu; fi
if [ "$GPU" = 1 ]; then
    log "CUDA device found: the GPU path"
else
    log "no CUDA device (or CHECK_DEVICE=cpu): the CPU path; the GPU parts are skipped and marked so"
fi
QARG=()
[ "$QUICK" = 1 ] && QARG=(--quick)

run_step env 60 "versions" "$PY_ENV" "$BENCH" env --out "$WORK/env.json"

if [ "$GPU" = 1 ]; then
    run_step tests 200 "gpu-marked tests, compiled Triton" env -u TRITON_INTERPRET "$PY_ENV" -m pytest -m gpu tests -q \
        -p no:cacheprovider --continue-on-collection-errors -o faulthandler_timeout=120 \
        --junitxml="$WORK/tests.xml" -o junit_family=xunit1
else
    run_step tests 150 "CPU: kernels under TRITON_INTERPRET=1; tests/gpu skip" "$PY_ENV" -m pytest tests/kernels tests/gpu -q \
        -p no:cacheprovider --junitxml="$WORK/tests.xml" -o junit_family=xunit1
fi

if [ "$GPU" = 1 ]; then
    run_step bench 220 "MONAI #6427's case on the GPU" "$PY_ENV" "$BENCH" bench --device cuda --out "$WORK/bench.json"
    run_step slab 100 "out-of-memory boundary under a memory cap" "$PY_ENV" "$BENCH" slab --device cuda --out "$WORK/slab.json"
    run_step demo 180 "demo 3d_fullres predict and training memory" "$PY_ENV" "$BENCH" demo --device cuda \
        --out "$WORK/demo.json" --work "$WORK/demo"
else
    run_step bench 150 "CPU: reduced volume (GPU benchmark skipped)" "$PY_ENV" "$BENCH" bench --device cpu "${QARG[@]}" \
        --out "$WORK/bench.json"
    if [ "$QUICK" = 1 ]; then DEMO_ARGS=(--cases 2 --quick); else DEMO_ARGS=(); fi
    run_step slab 60 "CPU: dry run (the boundary needs a GPU)" "$PY_ENV" "$BENCH" slab --device cpu --out "$WORK/slab.json"
    run_step demo 240 "CPU: demo 3d_fullres predict without mirroring, 3d_cpu training dry run" "$PY_ENV" "$BENCH" demo \
        --device cpu "${DEMO_ARGS[@]}" --out "$WORK/demo.json" --work "$WORK/demo"
fi

# pytest's own output, for whoever reads the results without the full log
if [ -f "$LOG" ]; then
    awk '/== tests /{on=1} /tests: (ok|failed|timeout) in/{on=0} on' "$LOG" >"$OUT/tests.log" 2>/dev/null || true
    [ -s "$OUT/tests.log" ] || rm -f "$OUT/tests.log"
fi

log "== report"
CHECK_DEVICE="$([ "$GPU" = 1 ] && echo auto || echo cpu)" timeout 60 "$PY_ENV" "$BENCH" report --work "$WORK" --out "$OUT" \
    2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED=1
log "done in $(( $(date +%s) - START )) s (budget ${BUDGET} s); device path: $DEV; results in $OUT"
[ -z "${CHECK_WORK:-}" ] && [ "${CHECK_KEEP_WORK:-0}" != 1 ] && rm -rf "$WORK"
exit "$FAILED"
