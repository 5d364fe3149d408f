"""Reference: full-ranking evaluation in PyTorch on CPU, the counterpart of
`distillrec bench eval`. Benchmark-only: never a test or CI dependency (needs
torch; PYTHON=/work/torchenv/bin/python on the dev machine).

Usage:  python3 bench_eval_torch.py --data /work/runs/ml1m-data --len 200 --batch 256

Reads a distillrec prepared dataset (`distillrec data prepare`):
  items.csv      item_id,raw_id,title   (ids 1..N; N = its number of rows)
  sequences.csv  seq_id,user,items,...  (items: space-separated ids, oldest first)
  test.csv       key,seq_id,pos,target  (valid.csv for --split valid): the row's
                 history is items[:pos] of its sequence, its target items[pos]
Without test.csv (valid.csv), each sequence gives one leave-one-out row: target
the last item, history everything before it.

The model is the SASRec of ../shared/bench/torch_sasrec_step.py (same classes),
randomly initialised (torch.manual_seed(--seed)), in eval mode under
torch.no_grad. For each batch of rows: the input is the last --len history items,
left-padded with 0; h = model(seq)[:, -1]; scores = h @ items.weight^T; column 0
and every history item (the whole history, not only the last --len) are set to
-inf; rank = number of items scoring strictly higher than the target (the
target's own score is read before masking); HR@10 and NDCG@10 accumulate.
The clock runs from the first batch to the last (reading the files is not
timed; building each batch's tensors is). It prints one line:
  RESULT impl=torch bench=eval rows=... items=... len=... batch=... rows_per_s=... wall_secs=... peak_rss_mb=... hr@10=... ndcg@10=...
"""
import argparse
import csv
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_sasrec_model import SASRec  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--data", required=True, help="a prepared dataset directory")
p.add_argument("--split", choices=["valid", "test"], default="test")
p.add_argument("--len", type=int, default=200)
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=1)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
D, L, B = a.hidden, a.len, a.batch
csv.field_size_limit(sys.maxsize)

# --- the prepared dataset (not timed) ---
with open(os.path.join(a.data, "items.csv"), newline="", encoding="utf-8") as f:
    ids = [int(r["item_id"]) for r in csv.DictReader(f)]
N = len(ids)
if sorted(ids) != list(range(1, N + 1)):
    sys.exit(f"{a.data}/items.csv: item ids are not 1..{N}")
a.items = N
with open(os.path.join(a.data, "sequences.csv"), newline="", encoding="utf-8") as f:
    seqs = {r["seq_id"]: [int(x) for x in r["items"].split()] for r in csv.DictReader(f)}
rows_path = os.path.join(a.data, f"{a.split}.csv")
rows = []  # (history, target)
if os.path.exists(rows_path):
    with open(rows_path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            items, pos = seqs[r["seq_id"]], int(r["pos"])
            if items[pos] != int(r["target"]):
                sys.exit(f"{rows_path}: row {r['key']}: target {r['target']} is not item {pos} of its sequence")
            rows.append((items[:pos], items[pos]))
else:  # leave-one-out: the last item of each sequence
    rows = [(s[:-1], s[-1]) for s in seqs.values() if len(s) >= 2]
if not rows or max(max(h + [t]) for h, t in rows) > N:
    sys.exit(f"{a.data}: no {a.split} rows, or an item id beyond {N}")


model = SASRec(a.items, D, a.heads, a.layers, L).eval()
hits = ndcg = 0.0
t0 = time.perf_counter()
with torch.no_grad():
    for start in range(0, len(rows), B):
        chunk = rows[start:start + B]
        seq = torch.tensor([[0] * (L - len(h[-L:])) + h[-L:] for h, _ in chunk])
        width = max(1, max(len(h) for h, _ in chunk))
        hist = torch.tensor([h + [0] * (width - len(h)) for h, _ in chunk])  # 0 pads: column 0 is masked anyway
        tgt = torch.tensor([t for _, t in chunk]).unsqueeze(1)
        h = model(seq)[:, -1]
        scores = h @ model.items.weight.t()  # [b, N + 1]
        target = scores.gather(1, tgt)
        scores[:, 0] = -math.inf
        scores.scatter_(1, hist, -math.inf)
        rank = (scores > target).sum(1)  # 0-based
        top = rank < 10
        hits += top.sum().item()
        ndcg += (1.0 / torch.log2(rank[top].double() + 2)).sum().item()
wall = time.perf_counter() - t0
n = len(rows)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT impl=torch bench=eval rows={n} items={N} len={L} batch={B} rows_per_s={n / wall:.1f} "
      f"wall_secs={wall:.3f} peak_rss_mb={rss:.0f} hr@10={hits / n:.4f} ndcg@10={ndcg / n:.4f}")
