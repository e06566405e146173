#!/usr/bin/env bash
# The GPU benchmark: ESD-x, minimalist masks (5 and 20 steps), DMD2 and plain sampling on a
# random-weight SD 1.5 (scripts/bench/bench_methods.py), run on a CUDA machine from the repository
# root. Writes <gpu>.json, <gpu>.md and bench.log under $OUT (default scripts/bench/results) and
# copies the JSON and the table into scripts/bench/results/. Extra arguments go to bench_methods.py:
#   bash scripts/bench/run_gpu.sh [--jobs esd,dmd2]
# A machine without the dependencies and without internet: put their wheels in .whl/ (git-ignored;
# e.g. `pip download --no-deps -d .whl diffusers omegaconf open-clip-torch ...` at the versions of
# requirements/pinned.txt); they are installed into /tmp/site first.
set -euo pipefail
OUT=${OUT:-scripts/bench/results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, lightning, transformers, omegaconf, open_clip; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| diffusers', diffusers.__version__, \
'| lightning', lightning.__version__, '| transformers', transformers.__version__)"
# --time-budget-s: no job starts after 7 minutes, so a 10-minute limit on the whole run still returns the finished jobs.
python3 scripts/bench/bench_methods.py --out-dir "$OUT" --time-budget-s 420 "$@" 2>&1 | tee "$OUT/bench.log"
if [ "$OUT" != scripts/bench/results ]; then
  mkdir -p scripts/bench/results && cp "$OUT"/*.json "$OUT"/*.md scripts/bench/results/ 2>/dev/null || true
fi
ls -la "$OUT"
