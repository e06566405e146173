#!/usr/bin/env bash
# On the GPU machine (device tool; carry .whl from fetch_wheels.sh): train the toy base
# model for at most MINUTES minutes and send back, under $OUT, the fp16 weights split into
# parts under the tool's 16 MiB limit, the run's configs, metrics.csv and samples.
#   run(command="bash scripts/gpu/train_toy_base.sh 9", carry=[".whl"])
# To continue an earlier run, carry INIT (a merged weights file) and pass it as $2: the
# weights continue, the optimizer restarts (its state is too large to send back).
# Merge the parts here with: python scripts/gpu/merge_parts.py OUT/part-*.safetensors
#   checkpoints/toy/canvas_base.safetensors
set -euo pipefail
MINUTES=${1:-9}
INIT=${2:-}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
extra=("lightning.trainer.max_time=00:00:$(printf '%02d' "$MINUTES"):00")
[ -n "$INIT" ] && extra+=("model.params.ckpt_path=$INIT")
python3 main.py --base configs/toy/canvas_base.yaml configs/toy/canvas_base_gpu.yaml \
  --name toy_base --logdir logs_gpu "${extra[@]}"
run=$(ls -d logs_gpu/*_toy_base | tail -1)
python3 scripts/export_model.py --run "$run" --out /tmp/canvas_base.safetensors --dtype float16
python3 scripts/gpu/split_parts.py /tmp/canvas_base.safetensors "$OUT" 15
cp "$run"/configs/*-project.yaml "$OUT/project.yaml"
cp "$(ls "$run"/csv/*/metrics.csv | tail -1)" "$OUT/metrics.csv" || true
cp "$(ls "$run"/images/train/samples_gs-*.png | tail -1)" "$OUT/samples.png" || true
ls -la "$OUT"
