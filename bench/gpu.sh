#!/usr/bin/env bash
# The GPU path's report, on a machine with a CUDA GPU (not yet run on one: the development machines have none).
# A few minutes: the full-size random checkpoint (written once), then
#   1. batch-1 components (bench.breakdown --device cuda, bf16 + CUDA graphs): target frame <= 5 ms;
#   2. the engine sweep, 1..256 sessions, compiled (CUDA graphs): target >= 256 real-time sessions;
#   3. the load generator against `serve --device cuda --compile` at 64 users.
# Usage: bench/gpu.sh [OUT_DIR]   (default bench/out/gpu; PYTHON overrides the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/gpu}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: bench/gpu.sh needs a GPU')"
"$py" -c "import torch; p = torch.cuda.get_device_properties(0); print(p.name, p.total_memory >> 30, 'GiB')" \
  | tee "$out/device.txt"
ckpt=bench/out/ckpt-full
[ -f "$ckpt/lfm_audio_random.json" ] || "$py" -m server.cli make-checkpoint "$ckpt" --size full
sessions=${SESSIONS:-1,8,32,64,128,256}

echo "== 1. batch-1 components, bf16, eager and CUDA graphs" >&2
timeout 900 "$py" -m bench.breakdown --ckpt "$ckpt" --device cuda --configs bf16,bf16+compile --rounds 1 \
  --out "$out" 2>&1 | tee "$out/breakdown.log"

echo "== 2. engine sweep: $sessions sessions, bf16, compiled" >&2
timeout 1800 "$py" -m bench --suite engine --sizes full --dtypes bfloat16 --device cuda --compile \
  --sessions "$sessions" --no-reference --out "$out" 2>&1 | tee "$out/engine.log"

echo "== 3. load generator: 64 users on serve --device cuda --compile" >&2
timeout 900 "$py" -m loadtests run --users "${USERS:-64}" --no-progress --out "$out/loadtest" \
  --server-arg=--model --server-arg="$ckpt" --server-arg=--device --server-arg=cuda \
  --server-arg=--compile 2>&1 | tee "$out/loadtest.log"

{
  echo "# GPU report ($(cat "$out/device.txt"))"; echo
  cat "$out/breakdown.md"; echo; cat "$out/engine.md"; echo
  [ -f "$out/loadtest/report.md" ] && cat "$out/loadtest/report.md"
} > "$out/report.md"
echo "wrote $out/report.md"
