#!/usr/bin/env bash
# The GPU speed table in one command (benchmarks/gpu/gpu_speed.py says what it measures):
#   bash benchmarks/gpu/run.sh            on a GPU machine: under 8 minutes; writes benchmarks/gpu/results/gpu-speed.{json,md}
#   bash benchmarks/gpu/run.sh --tiny     on the CPU in seconds (tests/test_precision.py runs this, so it cannot rot)
# Extra arguments go to gpu_speed.py (--out DIR, --cases, --synths, --precisions, --memory-format, --repeats).
# It runs from the source tree (no install needed): PYTHON (default python3) must have torch; the other
# dependencies of dfcompress are checked first and named if missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${PYTHON:-python3}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" - <<'PY' || exit 2
import importlib.util, sys
need = ["torch", "torchvision", "timm", "torch_pruning", "pluggy", "click", "safetensors", "numpy"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("run.sh: this python lacks " + ", ".join(missing) + " (pip install them, or carry them as wheels)")
PY
exec "$py" "$root/benchmarks/gpu/gpu_speed.py" "$@"
