#!/usr/bin/env bash
# The toy-world results table: every method on the shipped toy model, judged the same way.
#
#   bash scripts/bench/toy_methods.sh [OUT_DIR]         # default scripts/bench/results/toy
#
# Runs ESD-x on a style, ESD-u on an object, minimalist masks on both, the baselines (UCE and
# concept ablation) on both, and DMD2 (4-step and 1-step students of the ESD-x-erased model), then evaluates each result and the base model
# with the same command (`scripts/evaluate.py`: every (object, style) prompt, IMAGES images
# each, seeds 0..IMAGES-1, the model's own sampler) and writes OUT_DIR/toy_methods.{json,md}.
# Which concepts: unless STYLE / OBJECT are given, scripts/bench/pick_concepts.py picks them
# from the BASE model's evaluation and the judge alone, before any method runs: the style
# (other than "solid", the plain fill) and the object the base model draws most reliably,
# leaving out the judge's sinks (a concept the judge gives to most blurred images: erasing
# it would measure blur), the first in canvas order on ties. DMD2_STEPS (critic updates,
# default 3000: at 500 the 4-step student still drew the erased style back, see each DMD2
# run's eval/progress.md, copied beside its metrics) and MASK_STEPS (default 300) set how
# long the CPU-bound runs train. Masks run once per MASK_VARIANTS entry (default "paper
# budget"; "" for none): "paper" is configs/methods/minimalist.yaml as it is (sigmoid masks,
# binarized to 5% after training), "budget" trains binary straight-through masks capped at the same 5% in every
# forward (the binary strategy's max_off_share), so training optimises the masks that are saved;
# MASK_SEED (default 0, the seed the table's mask rows were drawn with) is their model.params.seed;
# MASK_ARGS (default none) are configs or key=value overrides given to every mask run after
# minimalist.yaml (configs/methods/minimalist_transformer.yaml for a joint-attention MMDiT).
# ESD runs once per setting in ESD_RUNS, each a learning rate
# with an optional "@iterations" (default "5e-5 2e-4 1e-3 2e-4@1000 1e-3@1000": the official esd_sd.py
# values, 200 iterations at 5e-5, first, then larger learning rates, since that value was set
# for SD 1.5's 860M-parameter UNet, and the 1,000 iterations of the 2023 train-esd.py; "" for
# none); the table keeps every row, and the DMD2 teacher is the ESD-x run of ESD_TEACHER (a setting;
# default: the one with the highest UA, the first listed on ties; a student can only stay
# as erased as its teacher).
# BASELINES (default "uce ca"; "" for none) are the methods every toolkit ships: UCE
# (configs/methods/uce.yaml as it is: the closed-form edit, the other concepts of the erased kind
# preserved) and concept ablation (configs/methods/ca.yaml, the concept removed from its prompts as
# the anchor), on the style and on the object; CA runs once per CA_RUNS setting, "lr[@iterations]"
# like ESD_RUNS (default "1.6e-5 1e-3": the official script's scaled rate and 100 steps first, then a
# larger rate, as for ESD).
# Every erased model is then attacked with each config of ATTACKS (default UnlearnDiffAtk; "" for
# none) by scripts/attack.py: its concept's prompts, ATTACK_IMAGES (4) held-out seeds each, the
# ASR before and after into OUT/attacks/<row>/<attack>/attack.json and the table.
# MODEL (default configs/models/toy_canvas.yaml, the toy UNet) is the model config every row
# erases and evaluates: configs/models/toy_mmdit.yaml gives the toy MMDiT's rows (ESD_RUNS set to
# its settings, ESD_X_ARGS="train_method=xattn-pooled null_weight=1 model.params.preserve=auto"
# as configs/methods/esd_joint.yaml sets for ESD-x there, MASK_ARGS=configs/methods/minimalist_transformer.yaml
# for masks on its heads, feed-forward and norm channels, DMD2_STEPS=0 to leave out the students;
# the ESD train methods are the joint-attention ones, unlearn/selection.py). ESD_ARGS (default
# none) are key=value overrides given to every ESD run, ESD_X_ARGS to the ESD-x runs only and
# ESD_U_ARGS to the ESD-u runs only.
# A step whose metrics.json (attack.json) exists is skipped, so an interrupted run continues, and
# disjoint parts can run side by side, each on its own core, once the base evaluation exists:
#   OMP_NUM_THREADS=1 taskset -c 0 env MASK_VARIANTS= BASELINES= bash scripts/bench/toy_methods.sh
#   OMP_NUM_THREADS=1 taskset -c 1 env ESD_RUNS= DMD2_STEPS=0 bash scripts/bench/toy_methods.sh
# (ESD and DMD2 on one, masks and baselines on the other); each ends by writing the table from
# every row that exists, so the one that finishes last writes the whole table.
set -euo pipefail
OUT=${1:-scripts/bench/results/toy}
IMAGES=${IMAGES:-4}
ATTACKS=${ATTACKS-configs/attacks/unlearndiffatk.yaml}
ATTACK_IMAGES=${ATTACK_IMAGES:-4}
DMD2_STEPS=${DMD2_STEPS:-3000}
MASK_STEPS=${MASK_STEPS:-300}
MASK_VARIANTS=${MASK_VARIANTS-paper budget}
MASK_SEED=${MASK_SEED:-0}
ESD_RUNS=${ESD_RUNS-5e-5 2e-4 1e-3 2e-4@1000 1e-3@1000}
ESD_TEACHER=${ESD_TEACHER:-}
ESD_ARGS=${ESD_ARGS:-}
ESD_X_ARGS=${ESD_X_ARGS:-}
ESD_U_ARGS=${ESD_U_ARGS:-}
MASK_ARGS=${MASK_ARGS:-}
BASELINES=${BASELINES-uce ca}
CA_RUNS=${CA_RUNS:-1.6e-5 1e-3}
CA_LR=1.6e-5 CA_ITERATIONS=100  # configs/methods/ca.yaml's lr and iterations (run names leave them out)
MODEL=${MODEL:-configs/models/toy_canvas.yaml}
PY=${PYTHON:-python}
RUNS="$OUT/runs"
mkdir -p "$RUNS"

train() {  # train NAME CONFIG... -- runs main.py and prints the run directory
  local name=$1; shift
  "$PY" main.py --base "$MODEL" "$@" --name "$name" --logdir "$RUNS" >"$RUNS/$name.log" 2>&1 \
    || { tail -30 "$RUNS/$name.log" >&2; exit 1; }
  ls -d "$RUNS"/*_"$name" | tail -1
}
done_() { [ -f "$OUT/eval/$1/metrics.json" ]; }
# Run names carry the setting where it differs from the method's defaults (esd_sd.py's 5e-5 and 200 for
# ESD): esd_x, esd_x_lr1e-3, esd_x_lr1e-3_it1000, ...
lr_of() { echo "${1%@*}"; }  # a setting "lr[@iterations]"
iterations_of() { if [ "$1" = "${1%@*}" ]; then echo "${2:-200}"; else echo "${1#*@}"; fi; }  # SETTING [DEFAULT]
suffix_of() {  # suffix_of SETTING [DEFAULT_LR DEFAULT_ITERATIONS]
  local lr iterations default_lr=${2:-5e-5} default_iterations=${3:-200}
  lr=$(lr_of "$1"); iterations=$(iterations_of "$1" "$default_iterations")
  [ "$lr" = "$default_lr" ] || printf _lr%s "$lr"
  [ "$iterations" = "$default_iterations" ] || printf _it%s "$iterations"
}
evaluate() {  # evaluate NAME [--concept C] [model args...]
  local name=$1; shift
  done_ "$name" && return 0
  "$PY" scripts/evaluate.py --images-per-prompt "$IMAGES" --out "$OUT/eval/$name/metrics.json" "$@" \
    >"$OUT/eval_$name.log" 2>&1 || { tail -30 "$OUT/eval_$name.log" >&2; exit 1; }
}
attack() {  # attack NAME CONCEPT [model args...] -- every ATTACKS config on the erased model
  local name=$1 concept=$2; shift 2
  for config in $ATTACKS; do
    local out="$OUT/attacks/$name/$(basename "$config" .yaml)/attack.json"
    [ -f "$out" ] && continue
    mkdir -p "$(dirname "$out")"
    "$PY" scripts/attack.py "$@" --concept "$concept" --attack "$config" --images-per-prompt "$ATTACK_IMAGES" \
      --out "$out" >"$(dirname "$out")/attack.log" 2>&1 || { tail -30 "$(dirname "$out")/attack.log" >&2; exit 1; }
  done
}
timed() {  # timed NAME CMD... -- appends "NAME seconds" to OUT/times.txt
  local name=$1; shift; local t0=$SECONDS
  "$@"
  echo "$name $((SECONDS - t0))" >>"$OUT/times.txt"
}
touch "$OUT/times.txt"

evaluate base --config "$MODEL"
if [ -z "${STYLE:-}" ] || [ -z "${OBJECT:-}" ]; then
  read -r picked_style picked_object < <("$PY" scripts/bench/pick_concepts.py "$OUT/eval/base/metrics.json" \
    --out "$OUT/concepts.json" 2>"$OUT/pick_concepts.log")
  STYLE=${STYLE:-$picked_style}
  OBJECT=${OBJECT:-$picked_object}
fi
echo "concepts: style $STYLE, object $OBJECT" | tee "$OUT/concepts.txt"

for setting in $ESD_RUNS; do
  suffix=$(suffix_of "$setting")
  lr=$(lr_of "$setting")
  iterations=$(iterations_of "$setting")
  for variant in esd_x esd_u; do
    name=$variant$suffix
    concept=$([ "$variant" = esd_x ] && echo "$STYLE" || echo "$OBJECT")
    train_method=$([ "$variant" = esd_x ] && echo xattn || echo noxattn)
    variant_args=$([ "$variant" = esd_x ] && echo "$ESD_X_ARGS" || echo "$ESD_U_ARGS")
    if ! done_ "$name"; then
      timed "$name" train "${name}_$concept" configs/methods/esd_x.yaml train_method="$train_method" \
        concept="$concept" lr="$lr" iterations="$iterations" $ESD_ARGS $variant_args lightning.callbacks.toy_benchmark=null \
        >"$OUT/$name.run"
      evaluate "$name" --config "$MODEL" --weights "$(cat "$OUT/$name.run")/erased.safetensors" --concept "$concept"
    fi
    attack "$name" "$concept" --config "$MODEL" --weights "$(cat "$OUT/$name.run")/erased.safetensors"
  done
done

for variant in $MASK_VARIANTS; do
  prefix=$([ "$variant" = paper ] && echo masks || echo "masks_$variant")
  case "$variant" in  # the overrides of a MASK_VARIANTS entry
    paper) overrides=() ;;  # configs/methods/minimalist.yaml as it is: sigmoid masks, binarized after training
    budget) overrides=("model.params.strategy={target: unlearn.hooks.strategies.StraightThroughBinaryMask, \
params: {max_off_share: 0.05}}") ;;
    *) echo "MASK_VARIANTS: unknown variant '$variant' (paper | budget)" >&2; exit 2 ;;
  esac
  for kind in style object; do
    concept=$([ "$kind" = style ] && echo "$STYLE" || echo "$OBJECT")
    name=${prefix}_$kind
    if ! done_ "$name"; then
      timed "$name" train "${prefix}_$concept" configs/methods/minimalist.yaml $MASK_ARGS concept="$concept" "${overrides[@]}" \
        lightning.trainer.max_steps="$MASK_STEPS" model.params.seed="$MASK_SEED" \
        lightning.callbacks.toy_benchmark=null >"$OUT/$name.run"
      evaluate "$name" --config "$MODEL" --masks "$(cat "$OUT/$name.run")/masks.safetensors" --concept "$concept"
    fi
    attack "$name" "$concept" --config "$MODEL" --masks "$(cat "$OUT/$name.run")/masks.safetensors"
  done
done

for baseline in $BASELINES; do
  case "$baseline" in
    uce) settings=(one) ;;  # a closed-form edit has no learning rate or iterations
    ca) read -ra settings <<<"$CA_RUNS" ;;
    *) echo "BASELINES: unknown baseline '$baseline' (uce | ca)" >&2; exit 2 ;;
  esac
  for kind in style object; do
    concept=$([ "$kind" = style ] && echo "$STYLE" || echo "$OBJECT")
    for setting in "${settings[@]}"; do
      if [ "$baseline" = uce ]; then
        name=uce_$kind; overrides=()
      else
        name=ca_$kind$(suffix_of "$setting" "$CA_LR" "$CA_ITERATIONS")
        overrides=(lr="$(lr_of "$setting")" iterations="$(iterations_of "$setting" "$CA_ITERATIONS")")
      fi
      if ! done_ "$name"; then
        timed "$name" train "${name}_$concept" "configs/methods/$baseline.yaml" concept="$concept" "${overrides[@]}" \
          lightning.callbacks.toy_benchmark=null >"$OUT/$name.run"
        evaluate "$name" --config "$MODEL" --weights "$(cat "$OUT/$name.run")/erased.safetensors" --concept "$concept"
      fi
      attack "$name" "$concept" --config "$MODEL" --weights "$(cat "$OUT/$name.run")/erased.safetensors"
    done
  done
done

if [ "$DMD2_STEPS" -gt 0 ]; then
  if [ -z "$ESD_TEACHER" ]; then  # the most erased ESD-x run: argv holds "setting metrics.json" pairs
    ESD_TEACHER=$("$PY" - $(for setting in $ESD_RUNS; do echo "$setting $OUT/eval/esd_x$(suffix_of "$setting")/metrics.json"; done) <<'PY'
import json, sys
runs = list(zip(sys.argv[1::2], sys.argv[2::2]))
print(max(runs, key=lambda run: json.load(open(run[1]))["UA"])[0])  # max keeps the first of equals
PY
)
  fi
  echo "DMD2 teacher: ESD-x $ESD_TEACHER" | tee -a "$OUT/concepts.txt"
  suffix=$(suffix_of "$ESD_TEACHER")
  teacher="$(cat "$OUT/esd_x$suffix.run")/erased.safetensors"
fi
for steps in $([ "$DMD2_STEPS" -gt 0 ] && echo 4 1); do
  name=dmd2_${steps}step$suffix
  if ! done_ "$name"; then
    timesteps=$([ "$steps" = 4 ] && echo "[999,749,499,249]" || echo "[999]")
    timed "$name" train "$name" configs/methods/dmd2.yaml \
      model.params.teacher_weights="$teacher" model.params.generator_timesteps="$timesteps" \
      lightning.trainer.max_steps="$DMD2_STEPS" configs/eval/toy.yaml lightning.callbacks.toy_benchmark.params.before=false \
      lightning.callbacks.toy_benchmark.params.every_n_steps=500 >"$OUT/$name.run"
    evaluate "$name" --run "$(cat "$OUT/$name.run")" --concept "$STYLE"
    cp "$(cat "$OUT/$name.run")/eval/progress.md" "$OUT/eval/$name/progress.md"
  fi
  attack "$name" "$STYLE" --run "$(cat "$OUT/$name.run")"
done

"$PY" scripts/bench/toy_table.py "$OUT" --style "$STYLE" --object "$OBJECT" --images "$IMAGES"
