#!/usr/bin/env bash
# Active distillation on MovieLens-100k (docs/results/active): a teacher
# stronger than the converged student (an ensemble of three converged
# SASRec seeds, cached once over every training row), the baseline at the
# distillation's epoch budget and trained to convergence, distillation from
# every row, and `active` rounds under several policies, budgets and round
# counts (one round is one-shot selection of the same total budget; policy
# `all` with budget 1.0 is every row).
#   scripts/active_experiment.sh [distillrec binary] [work dir]
# Subsets through the environment (defaults: the full grid, many hours on
# 2 cores):
#   SEEDS="1 2 3" BUDGETS="0.05 0.1 0.25" ROUNDS="1 3 5"
#   POLICIES="entropy loss badge random"
# and UNTIL=converged for active runs whose distillation is trained to
# convergence (directories actconv-*, instead of act-*), WARM=1 for rounds
# that continue from the round before's student (active.warm_start;
# directories actws-*, in the 15-epoch report).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
B="${1:-$here/target/release/distillrec}"
W="${2:-runs/active-ml100k}"
C="$here/configs/ml-100k-distill.toml"
SEEDS=${SEEDS:-"1 2 3"}
BUDGETS=${BUDGETS:-"0.05 0.1 0.25"}
ROUNDS=${ROUNDS:-"1 3 5"}
POLICIES=${POLICIES:-"entropy loss badge random"}
UNTIL=${UNTIL:-budget}
WARM=${WARM:-0}
prefix=act
CONVERGED_DISTILL=()
if [ "$UNTIL" = converged ]; then
  prefix=actconv
  CONVERGED_DISTILL=(--set train.distill.until=converged --set train.distill.patience=10)
fi
if [ "$WARM" = 1 ]; then
  prefix=${prefix/act/actws}
  CONVERGED_DISTILL+=(--set active.warm_start=true)
fi
mkdir -p "$W"
cd "$W"
D=(--data data)
[ -f data/dataset.json ] || "$B" data prepare --dataset ml-100k --raw "$here/../shared/data/raw/ml-100k" --out data
CONVERGED=(--set train.student.until=converged --set train.student.patience=10)
# converged students: the teacher's members (seeds 11-13) and the fair
# baselines (the student seeds)
for s in 11 12 13 $SEEDS; do
  name=conv-s$s
  [ -f "$name/metrics.json" ] || "$B" train student --config "$C" "${D[@]}" --out "$name" --set "seed=$s" "${CONVERGED[@]}"
done
members=(--checkpoint conv-s11/checkpoints/best.safetensors --checkpoint conv-s12/checkpoints/best.safetensors
         --checkpoint conv-s13/checkpoints/best.safetensors)
[ -f teacher/metrics.json ] || "$B" eval student "${members[@]}" "${D[@]}" --out teacher
[ -f cache/manifest.json ] || "$B" teacher from-student "${members[@]}" "${D[@]}" --out cache
for s in $SEEDS; do
  # the baseline at the distillation's epoch budget; distillation from every
  # row at that budget and trained to convergence
  [ -f "base-s$s/metrics.json" ] || "$B" train student --config "$C" "${D[@]}" --out "base-s$s" --set "seed=$s"
  [ -f "all-s$s/metrics.json" ] || "$B" distill --config "$C" "${D[@]}" --teacher-cache cache --out "all-s$s" --set "seed=$s"
  [ -f "allconv-s$s/metrics.json" ] || "$B" distill --config "$C" "${D[@]}" --teacher-cache cache --out "allconv-s$s" \
    --set "seed=$s" --set train.distill.until=converged --set train.distill.patience=10
  # every row as one round: the all-rows point of the curves
  "$B" active --config "$C" "${D[@]}" --student "base-s$s/checkpoints/best.safetensors" --teacher-cache cache \
    --out "$prefix-all-1.0-r1-s$s" --set "seed=$s" --set selection.policy=all --set selection.budget=1.0 \
    "${CONVERGED_DISTILL[@]}"
  for pol in $POLICIES; do
    for b in $BUDGETS; do
      for r in $ROUNDS; do
        "$B" active --config "$C" "${D[@]}" --student "base-s$s/checkpoints/best.safetensors" --teacher-cache cache \
          --out "$prefix-$pol-$b-r$r-s$s" --set "seed=$s" --set "selection.policy=$pol" --set "selection.budget=$b" \
          --set "active.rounds=$r" "${CONVERGED_DISTILL[@]}"
      done
    done
  done
done
# every finished run in the work dir, whatever subset made it: same label =
# seeds (labels avoid parentheses, which Markdown escaping shows)
runs=(teacher=teacher)
for d in base-s*; do [ -f "$d/metrics.json" ] && runs+=("baseline, 15 epochs=$d"); done
for d in conv-s*; do
  case $d in conv-s1? ) continue ;; esac # the teacher's members
  [ -f "$d/metrics.json" ] && runs+=("converged=$d")
done
for d in all-s*; do [ -f "$d/metrics.json" ] && runs+=("all rows, 15 epochs=$d"); done
for d in allconv-s*; do [ -f "$d/metrics.json" ] && runs+=("all rows, converged=$d"); done
# one report per distillation protocol: 15 epochs (act-*) in report/,
# trained to convergence (actconv-*) in report-converged/
for kind in act actconv; do
  active=()
  for d in "$kind"-* actws-*; do
    [ -f "$d/active.json" ] || continue
    IFS=- read -r pk pol b r _ <<< "$d"
    case $pk in
      actws) [ "$kind" = act ] || continue; warm=", warm start" ;;
      actwsconv) continue ;;
      *) warm="" ;;
    esac
    n=${r#r}; word=rounds; [ "$n" = 1 ] && word=round
    active+=("$pol, $(awk -v b="$b" 'BEGIN { printf "%g%%", b * 100 }') in $n $word$warm=$d")
  done
  [ ${#active[@]} -gt 0 ] || continue
  out=report; [ "$kind" = actconv ] && out=report-converged
  "$B" report --runs "${runs[@]}" --active-runs "${active[@]}" --baseline "baseline, 15 epochs" \
    --converged converged --out "$out"
done
