#!/usr/bin/env bash
# The paper profile on one GPU machine that has no network (README, "Paper scale on one GPU"): from the transfer
# parts of `python -m backdoorlab.airgap bundle` to the SST-2 table, its cost, and the GPU benchmark.
#
#   benchmarks/paper_gpu.sh PART_DIR...       # in the project's root there, every part-<i> folder named
#
# Steps, each timed in $OUT/log and stopped where DEADLINE (seconds, default 540) would be passed, so that the
# results are packed before a caller's own limit:
#   1. check and join the parts (model, wheels, data) and convert the model; the versions found;
#   2. the paper profile's code path on the tiny model (LoRA and full finetuning on the GPU, seconds);
#   3. benchmarks/profile_gpu.py: where a training step's time goes;
#   4. the learning rate, chosen on SST-2 validation as the most accurate clean run of SETTINGS
#      (benchmarks/training_budget.py), unless the project already holds that choice (then the profile's);
#   5. the SST-2 table at that rate: the clean baseline and 17 attacks, seed 0 (runs launch --record);
#   6. benchmarks/bench_gpu.py (the code before from BASELINE_LIB, a lib/ folder, where git history is missing);
#   7. while time is left, seeds 1 and 2 of the baseline and one attack per group.
# $OUT/paper_gpu.tar.gz then holds results/ (the runs' records, JSON without weights, and results/bench/raw).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/paper_gpu_out}
DEADLINE=${DEADLINE:-570}
PROFILE=${PROFILE:-paper}        # smoke: the whole flow in a minute on a CPU (with BENCH_ARGS="--model tiny --rows 256")
BENCH_ARGS=${BENCH_ARGS:-"--epochs 1"}  # the ratios and MFU on one epoch; a whole run's seconds are the table's
SETTINGS=${SETTINGS:-"all:3:1e-5 all:3:3e-5 all:3:1e-4"}  # rows:epochs:learning-rate, the candidates
SITE=${SITE:-/tmp/backdoorlab-site}
export BACKDOORLAB_CACHE=${BACKDOORLAB_CACHE:-/tmp/backdoorlab-cache}   # the converted model
export BACKDOORLAB_OUT=${BACKDOORLAB_OUT:-/tmp/backdoorlab-out}         # the run cache and results
export BACKDOORLAB_BENCH_OUT="$BACKDOORLAB_OUT/results/bench"
export PYTHONPATH="$PWD/lib" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TQDM_DISABLE=1  # progress bars would fill the log
mkdir -p "$OUT" "$BACKDOORLAB_BENCH_OUT/raw"
LOG="$OUT/log"

pack() {
  tar -czf "$OUT/paper_gpu.tar.gz" -C "$BACKDOORLAB_OUT" --exclude=weights --exclude='.*' --exclude='*.pt' \
      --exclude='*.safetensors' results
  echo "== packed $(du -h "$OUT/paper_gpu.tar.gz" | cut -f1) after ${SECONDS}s" | tee -a "$LOG"
}
trap pack EXIT

step() {  # NAME RESERVE CMD...: CMD with the time left but RESERVE seconds (kept for the steps after it)
  local name=$1 reserve=$2 start=$SECONDS left
  shift 2
  left=$(( DEADLINE - SECONDS - reserve ))
  if (( left < 10 )); then
    echo "== $name: skipped (${left}s left)" | tee -a "$LOG"
    return 1
  fi
  echo "== $name: $* (limit ${left}s)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=15 "$left" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( SECONDS - start ))s" | tee -a "$LOG"
  return "$rc"
}

exports=$(python3 -m backdoorlab.airgap unbundle "$@" --site "$SITE") || exit 1
eval "$exports"
python3 -c "import torch, transformers, peft, accelerate, datasets; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'datasets',
datasets.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee -a "$LOG"
step convert 0 python3 -m backdoorlab.models || exit 1
step smoke 0 python3 -m backdoorlab.runs launch --profile paper --smoke --tables methods --datasets sst2 --seeds 0 \
  || exit 1

step profile 0 python3 benchmarks/profile_gpu.py

CHOSEN="results/bench/raw/training_budget_$PROFILE.json"  # committed: the choice is made once
if [[ -f $CHOSEN ]]; then
  LR=$(python3 -c "from backdoorlab.profiles import get_profile; print(get_profile('$PROFILE').train.lr)")
  echo "== learning rate: $LR, the profile's (chosen in $CHOSEN)" | tee -a "$LOG"
else
  BUDGET="$BACKDOORLAB_BENCH_OUT/raw/training_budget_$PROFILE.json"
  step choose_lr 160 python3 benchmarks/training_budget.py --profile "$PROFILE" --attacks clean --most-accurate \
    --settings $SETTINGS
  if LR=$(python3 -c "import json; print(json.load(open('$BUDGET'))['choice']['lr'])" 2>/dev/null); then
    echo "== learning rate: $LR, chosen on validation ($BUDGET)" | tee -a "$LOG"
  else
    LR=$(python3 -c "from backdoorlab.profiles import get_profile; print(get_profile('$PROFILE').train.lr)")
    echo "== learning rate: $LR, the profile's: no choice was made in time" | tee -a "$LOG"
  fi
fi

step table 75 python3 -m backdoorlab.runs launch --profile "$PROFILE" --tables attacks --datasets sst2 --seeds 0 \
  --lr "$LR" --record "$BACKDOORLAB_BENCH_OUT/raw/launch_${PROFILE}_sst2_seed0.json"
step bench 5 python3 benchmarks/bench_gpu.py $BENCH_ARGS ${BASELINE_LIB:+--baseline-lib "$BASELINE_LIB"}
step seeds 5 python3 -m backdoorlab.runs launch --profile "$PROFILE" --tables attacks --datasets sst2 --seeds 1 2 \
  --attacks $(python3 -c "from backdoorlab.profiles import SEEDED_ATTACKS; print(*SEEDED_ATTACKS)") --lr "$LR" \
  --record "$BACKDOORLAB_BENCH_OUT/raw/launch_${PROFILE}_sst2_seeds_1_2.json"
exit 0
