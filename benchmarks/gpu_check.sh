#!/usr/bin/env bash
# One-shot check of the CUDA engine (issue 14 item 8): installs nothing, runs in under 5 minutes.
#
#   benchmarks/gpu_check.sh                       # on a GPU machine: CUDA tests + GPU benchmark
#   benchmarks/gpu_check.sh --device cpu --quick  # the same script on CPU (what CI / a GPU-less machine runs)
#
# 1. environment: torch, CUDA device, memory;
# 2. model weights already cached (Hugging Face hub, torch hub, $CLASP_WEIGHTS_DIR): nothing is downloaded;
# 3. the engine's device tests (tests/test_engine_device.py with CLASP_TEST_DEVICE): batched eigenpairs,
#    k-means, batch invariance, and a batch that really runs out of GPU memory and must be split;
# 4. the benchmark (benchmarks/bench_batched.py): images/s per GPU, per-stage time, peak GPU memory and
#    GPU-hours per million images for ViT-S/8, DINOv2 ViT-S/14-reg and ViT-S/16 @448, patch and pixel,
#    RANDOM weights (speed only), plus every eigensolver timed on the device.
# Each step has its own time limit; the exit code is non-zero if the tests fail.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

echo "== environment"
"$PY" - <<'PYEOF'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: --device cuda but torch sees no CUDA device (run with --device cpu --quick for the CPU path)" >&2
  exit 1
fi

echo "== cached model weights (nothing is downloaded)"
hf="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
th="${TORCH_HOME:-$HOME/.cache/torch}/hub"
for dir in "$hf" "$th" "$th/checkpoints" "${CLASP_WEIGHTS_DIR:-$HOME/.cache/clasp/weights}"; do
  if [ -d "$dir" ]; then
    found=$(find "$dir" -maxdepth 1 -mindepth 1 \( -name 'models--*' -o -name '*.pth' -o -name '*.pt' \
            -o -name '*.safetensors' -o -name '*.bin' -o -type d \) 2>/dev/null | sort)
    echo "$dir:"; [ -n "$found" ] && echo "$found" | sed 's/^/  /' || echo "  (empty)"
  else
    echo "$dir: (none)"
  fi
done

echo "== engine tests on $DEVICE"
selection=()
[ "$QUICK" = 1 ] && selection=(-k "eigenpairs or memory")  # the quick path: solvers and the out-of-memory split
CLASP_TEST_DEVICE="$DEVICE" timeout 150 "$PY" -m pytest tests/test_engine_device.py -q -p no:cacheprovider \
  "${selection[@]}"
tests_rc=$?

echo "== benchmark on $DEVICE"
if [ "$QUICK" = 1 ]; then
  timeout 120 "$PY" benchmarks/bench_batched.py --device "$DEVICE" --quick
elif [ "$DEVICE" = cuda ]; then
  timeout 170 "$PY" benchmarks/bench_batched.py --device cuda --gpu --images 64 --batch 32 --solvers
else
  timeout 170 "$PY" benchmarks/bench_batched.py --device cpu --images 8 --batch 8
fi
bench_rc=$?

echo "== done in $(( $(date +%s) - start )) s (tests rc=$tests_rc, benchmark rc=$bench_rc)"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
