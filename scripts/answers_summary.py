#!/usr/bin/env python3
"""Summarise a generative teacher's answers (`answers-<split>.jsonl` of
`train teacher` / `eval teacher --out`): valid and correct counts, and
which candidate slot the answers name (a model that learnt the answer's
form but not the pick names the same slots whatever the target).

    scripts/answers_summary.py RUN_DIR/answers-test.jsonl [...]
"""
import collections
import json
import sys

for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    n = len(rows)
    if n == 0:
        print(f"{path}: no answers")
        continue
    valid = [r for r in rows if len(r["named"]) == 1]
    correct = sum(r["correct"] for r in rows)
    slots = collections.Counter(r["candidates"].index(r["named"][0]) for r in valid)
    items = collections.Counter(r["named"][0] for r in valid)
    k = len(rows[0]["candidates"])
    print(f"{path}: {n} rows, valid {len(valid)} ({len(valid) / n:.3f}), "
          f"correct {correct} ({correct / n:.3f}; chance {1 / k:.3f})")
    print("  named slot (0 = first candidate): "
          + " ".join(f"{s}:{c}" for s, c in sorted(slots.items())))
    top = items.most_common(3)
    print(f"  distinct items named: {len(items)}; most named: "
          + ", ".join(f"item {i} x{c}" for i, c in top))
