#!/usr/bin/env bash
# The LastFM teacher's loss curve on both backbone paths (issue 11): a short
# fixed run of the iLoRA teacher (SmolLM2-135M, first LAYERS layers, ROWS
# training rows, EPOCHS epochs, LoRA dropout on) trained once on the explicit
# CPU path (`teacher.path = "auto"`) and once on the composed candle graph it
# replaced (`teacher.path = "composed"`), then both curves side by side.
#
#   scripts/lastfm_teacher_paths.sh OUT_DIR [MODEL]
#
# OUT_DIR may be the work dir of scripts/lastfm_ilora.sh (its data and
# student are reused). Knobs (environment): ROWS (24), EPOCHS (4), LAYERS (12).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
W="${1:?usage: scripts/lastfm_teacher_paths.sh OUT_DIR [MODEL]}"
M="${2:-$here/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
B="${DISTILLREC:-$here/target/release/distillrec}"
ROWS="${ROWS:-24}" EPOCHS="${EPOCHS:-4}" LAYERS="${LAYERS:-12}"
[ -f "$M" ] || "$here/scripts/fetch-smollm2.sh"
[ -x "$B" ] || (cd "$here" && cargo build --release)
mkdir -p "$W"
M="$(cd "$(dirname "$M")" && pwd)/$(basename "$M")"
cd "$W"
S="$here/configs/lastfm-sasrec.toml" T="$here/configs/lastfm-ilora-smollm2.toml"
D="--data data"
[ -f data/dataset.json ] || "$B" data prepare --dataset ilora --raw "$here/../shared/data/ilora/lastfm" --config "$S" --out data
[ -f student/metrics.json ] || "$B" train student --config "$S" $D --out student
ST=student/checkpoints/best.safetensors
[ -f paths-rows.csv ] || "$B" select $D --policy random --budget "$ROWS" --student $ST --out paths-rows.csv --set seed=4
for p in auto composed; do
  [ -f "paths-$p/metrics.json" ] || "$B" train teacher --config "$T" $D --backbone "$M" --student $ST \
    --selection paths-rows.csv --out "paths-$p" --set teacher.num_layers="$LAYERS" --set teacher.path="$p" \
    --set train.teacher.max_epochs="$EPOCHS" --set train.teacher.patience="$EPOCHS" \
    --set train.teacher.valid_rows=16
done
python3 - <<'PY'
import csv
runs = {p: list(csv.DictReader(open(f"paths-{p}/history.csv"))) for p in ("auto", "composed")}
print("| epoch | train loss, explicit | train loss, composed | relative difference | s, explicit | s, composed |")
print("|---:|---:|---:|---:|---:|---:|")
worst = 0.0
for e, c in zip(runs["auto"], runs["composed"]):
    a, b = float(e["train_loss"]), float(c["train_loss"])
    d = abs(a - b) / abs(b)
    worst = max(worst, d)
    print(f"| {e['epoch']} | {a:.6f} | {b:.6f} | {d:.1e} | {float(e['epoch_secs']):.0f} | {float(c['epoch_secs']):.0f} |")
print(f"\nlargest relative difference: {worst:.1e}")
PY
