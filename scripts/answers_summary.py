#!/usr/bin/env python3
"""Summarise a generative teacher's answers (`answers-<split>.jsonl` of
`train teacher` / `eval teacher --out`): valid and correct counts, and
which candidate slot the answers name (a model that learnt the answer's
form but not the pick names the same slots whatever the target), and how
the answers relate to the frozen student's top candidate.

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
    if "student_pick" in rows[0]:
        # the frozen student's top candidate: does the teacher follow it?
        agree = sum(len(r["named"]) == 1 and r["named"][0] == r["student_pick"] for r in rows)
        s_right = sum(r["student_pick"] == r["target"] for r in rows)
        both = sum(r["correct"] and r["student_pick"] == r["target"] for r in rows)
        print(f"  student's pick: correct {s_right} ({s_right / n:.3f}); the answer names it in "
              f"{agree} rows; right where the student is wrong {correct - both}, "
              f"wrong where the student is right {s_right - both}")
    top = items.most_common(3)
    print(f"  distinct items named: {len(items)}; most named: "
          + ", ".join(f"item {i} x{c}" for i, c in top))
