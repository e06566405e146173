#!/usr/bin/env bash
# On the GPU machine (device tool; carry .whl from scripts/gpu/fetch_wheels.sh): benchmark ESD-x,
# minimalist masks (5 and 20 steps), DMD2 and plain sampling on a random-weight SD 1.5 and send
# back, under $OUT, <gpu>.json, <gpu>.md and bench.log. Extra arguments go to bench_methods.py.
#   run(command="bash scripts/bench/run_gpu.sh", carry=[".whl"], timeout_s=540)
# Copy the files back here with: cp <files_at>/*.json <files_at>/*.md scripts/bench/results/
set -euo pipefail
OUT=${OUT:-scripts/bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, lightning, transformers, omegaconf, open_clip; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| diffusers', diffusers.__version__, \
'| lightning', lightning.__version__, '| transformers', transformers.__version__)"
# --time-budget-s: no job starts after 7 minutes, so the results come back inside the tool's limit.
python3 scripts/bench/bench_methods.py --out-dir "$OUT" --time-budget-s 420 "$@" 2>&1 | tee "$OUT/bench.log"
if [ "$OUT" != scripts/bench/results ]; then
  mkdir -p scripts/bench/results && cp "$OUT"/*.json "$OUT"/*.md scripts/bench/results/ 2>/dev/null || true
fi
ls -la "$OUT"
