#!/usr/bin/env bash
# Reproduces docs/results/ml-100k-distill: teacher, 3-seed baseline and
# distilled students with a 15-epoch budget, ablations on seed 1, and the
# budget curve (random / entropy / loss at 10, 25, 50 % of the trained rows).
#   scripts/ml100k_distill_experiment.sh [distillrec binary] [work dir]
# About 40 minutes on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
B="${1:-$here/target/release/distillrec}"
W="${2:-runs/ml100k-distill}"
C="$here/configs/ml-100k-distill.toml"
mkdir -p "$W"
cd "$W"
D="--data data"
[ -f data/dataset.json ] || "$B" data prepare --dataset ml-100k --raw "$here/../shared/data/raw/ml-100k" --out data
# teacher: SASRec hidden 256, trained to convergence (early stopping, patience 20)
# (a finished teacher or cache in the work dir is kept: both are deterministic)
[ -f teacher/metrics.json ] || "$B" train student --config "$here/configs/ml-100k-sasrec.toml" $D --out teacher \
  --set student.hidden=256 --set student.heads=2 --set train.student.patience=20
[ -f cache/manifest.json ] || "$B" teacher from-student --checkpoint teacher/checkpoints/best.safetensors $D --out cache
T="--teacher-cache cache"
for s in 1 2 3; do
  "$B" train student --config "$C" $D --out base-s$s --set seed=$s
  "$B" distill --config "$C" $D $T --out dist-s$s --set seed=$s
done
for ab in "no-rd distill.lambda=0" "no-ed distill.ed_weight=0" "no-dro distill.alpha=0" \
          "no-wp distill.gamma_position=0" "no-wc distill.gamma_confidence=0" \
          "no-wo distill.gamma_consistency=0"; do
  set -- $ab
  "$B" distill --config "$C" $D $T --out abl-$1 --set seed=1 --set "$2"
done
"$B" distill --config "$C" $D $T --out abl-dro-only --set seed=1 --set distill.lambda=0 --set distill.ed_weight=0
budget=()
for pol in random entropy loss; do
  for b in 0.1 0.25 0.5; do
    "$B" select --config "$C" $D --policy $pol --budget $b --student base-s1/checkpoints/best.safetensors \
      --out sel-$pol-$b.csv --set seed=1
    "$B" distill --config "$C" $D $T --selection sel-$pol-$b.csv --out bud-$pol-$b --set seed=1
    budget+=("bud-$pol-$b")
  done
done
"$B" report \
  --runs baseline=base-s1 baseline=base-s2 baseline=base-s3 teacher=teacher \
         distilled=dist-s1 distilled=dist-s2 distilled=dist-s3 \
  --ablation-runs "w/o RD (λ=0)=abl-no-rd" "w/o ED (ed_weight=0)=abl-no-ed" "w/o DRO (α=0)=abl-no-dro" \
         "w/o position weight (γp=0)=abl-no-wp" "w/o confidence weight (γc=0)=abl-no-wc" \
         "w/o consistency weight (γo=0)=abl-no-wo" "DRO only (λ=0, ed_weight=0)=abl-dro-only" \
  --budget-runs dist-s1 "${budget[@]}" --baseline baseline --out report
