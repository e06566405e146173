#!/usr/bin/env bash
# The toy-world results table: every method on the shipped toy model, judged the same way.
#
#   bash scripts/bench/toy_methods.sh [OUT_DIR]         # default scripts/bench/results/toy
#
# Runs ESD-x on a style, ESD-u on an object, minimalist masks on both, and DMD2 (4-step and
# 1-step students of the ESD-x-erased model), then evaluates each result and the base model
# with the same command (`scripts/evaluate.py`: every (object, style) prompt, IMAGES images
# each, seeds 0..IMAGES-1, the model's own sampler) and writes OUT_DIR/toy_methods.{json,md}.
# The concepts are fixed here, not chosen after seeing results: STYLE=striped OBJECT=circle
# (the README's examples); override them through the environment. DMD2_STEPS (critic
# updates, default 600) and MASK_STEPS (default 300) set how long the CPU-bound runs train.
set -euo pipefail
OUT=${1:-scripts/bench/results/toy}
STYLE=${STYLE:-striped}
OBJECT=${OBJECT:-circle}
IMAGES=${IMAGES:-4}
DMD2_STEPS=${DMD2_STEPS:-600}
MASK_STEPS=${MASK_STEPS:-300}
MODEL=configs/models/toy_canvas.yaml
PY=${PYTHON:-python}
RUNS="$OUT/runs"
mkdir -p "$RUNS"

train() {  # train NAME CONFIG... -- runs main.py and prints the run directory
  local name=$1; shift
  "$PY" main.py --base "$MODEL" "$@" --name "$name" --logdir "$RUNS" >"$RUNS/$name.log" 2>&1 \
    || { tail -30 "$RUNS/$name.log" >&2; exit 1; }
  ls -d "$RUNS"/*_"$name" | tail -1
}
evaluate() {  # evaluate NAME [--concept C] [model args...]
  local name=$1; shift
  "$PY" scripts/evaluate.py --images-per-prompt "$IMAGES" --out "$OUT/eval/$name/metrics.json" "$@" \
    >"$OUT/eval_$name.log" 2>&1 || { tail -30 "$OUT/eval_$name.log" >&2; exit 1; }
}
timed() {  # timed NAME CMD... -- appends "NAME seconds" to OUT/times.txt
  local name=$1; shift; local t0=$SECONDS
  "$@"
  echo "$name $((SECONDS - t0))" >>"$OUT/times.txt"
}
: >"$OUT/times.txt"

evaluate base --config "$MODEL"
evaluate base_vs_style --config "$MODEL" --concept "$STYLE"
evaluate base_vs_object --config "$MODEL" --concept "$OBJECT"

timed esd_x train esd_x_"$STYLE" configs/methods/esd_x.yaml concept="$STYLE" model.params.eval_config=null >"$OUT/esd_x.run"
evaluate esd_x --config "$MODEL" --weights "$(cat "$OUT/esd_x.run")/erased.safetensors" --concept "$STYLE"

timed esd_u train esd_u_"$OBJECT" configs/methods/esd_u.yaml concept="$OBJECT" model.params.eval_config=null >"$OUT/esd_u.run"
evaluate esd_u --config "$MODEL" --weights "$(cat "$OUT/esd_u.run")/erased.safetensors" --concept "$OBJECT"

for kind in style object; do
  concept=$([ "$kind" = style ] && echo "$STYLE" || echo "$OBJECT")
  timed "masks_$kind" train "masks_$concept" configs/methods/minimalist.yaml concept="$concept" \
    lightning.trainer.max_steps="$MASK_STEPS" model.params.eval_config=null >"$OUT/masks_$kind.run"
  evaluate "masks_$kind" --config "$MODEL" --masks "$(cat "$OUT/masks_$kind.run")/masks.safetensors" --concept "$concept"
done

teacher="$(cat "$OUT/esd_x.run")/erased.safetensors"
for steps in 4 1; do
  timesteps=$([ "$steps" = 4 ] && echo "[999,749,499,249]" || echo "[999]")
  timed "dmd2_${steps}step" train "dmd2_${steps}step" configs/methods/dmd2.yaml \
    model.params.teacher_weights="$teacher" model.params.generator_timesteps="$timesteps" \
    lightning.trainer.max_steps="$DMD2_STEPS" >"$OUT/dmd2_${steps}step.run"
  evaluate "dmd2_${steps}step" --run "$(cat "$OUT/dmd2_${steps}step.run")" --concept "$STYLE"
done

"$PY" scripts/bench/toy_table.py "$OUT" --style "$STYLE" --object "$OBJECT" --images "$IMAGES"
