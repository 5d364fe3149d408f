"""Reference: one DLLM2Rec distillation step (SPEC 7) in PyTorch on CPU, the
counterpart of `distillrec bench distill`. Benchmark-only: never a test or CI
dependency (needs torch; PYTHON=/work/torchenv/bin/python on the dev machine).

Usage:  python3 bench_distill_torch.py --objective last --heads 1 --items 3500 --len 50 --batch 256

The student is exactly the model of ../shared/bench/torch_sasrec_step.py (same
classes, init, AdamW lr 1e-3, 4 random batches of [B, L+1] items cycled, 3
warm-up steps, then the timed ones), except that its forward takes the item
table as an argument: embedding distillation replaces the table of the input
lookup and of the scoring by

    table = E + ed_weight * (z W^T + b)   (rows >= 1; row 0, the padding, unchanged)

with z [items+1, teacher_dim] fixed random LLM item embeddings and W, b a trained
nn.Linear(teacher_dim, hidden) (--teacher-dim 0: no embedding distillation).

A synthetic teacher gives every supervised position (each of the L positions for
all_positions, the last one for last) K distinct random candidates with sorted
distances (uniform 0.5..6); the propensities come from random counts. Over the M
supervised positions (S = M, every one has teacher output), with s the [M, items]
scores (padding column dropped):

    loss = CE(s, t) + (1/S) sum_r [ a*DRO_r(t_r) + lam*(RD_r + a*sum_k w_rk*DRO_r(c_rk)) ]
    RD_r     = sum_k w_rk*softplus(-s_c_rk) + (sum_k w_rk)*softplus(s_neg_r)
    DRO_r(j) = log sum_i exp(p_i (s_i - 1[i = j])^2 / beta)
    w_r      = normalise(0.3 wp + 0.5 wc_r + 0.1 wo_r)

DRO is computed from one logsumexp per row, without an [M, K, N] tensor:
log sum_{i != j} e^{a_i} = LSE + log1p(-exp(a_j - LSE)), clamped so it stays finite
(so it overestimates DRO_r(j) when item j alone makes up the row's sum to within
1e-6 in float32; distillrec sums that row again without its largest term). A term
whose coefficient is 0 is not computed (as distillrec skips it). `--set
distill.KEY=VALUE` is accepted with distillrec's key names, so the compare
script can pass the same overrides to both. It prints one line:
  RESULT impl=torch objective=... k=... teacher_dim=... lambda=... alpha=... ed_weight=... steps_per_s=...
"""
import argparse
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_sasrec_model import SASRec  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--objective", choices=["last", "all_positions"], default="last")
p.add_argument("--heads", type=int, default=1)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--items", type=int, default=3500)
p.add_argument("--len", type=int, default=50)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--k", type=int, default=10)
p.add_argument("--teacher-dim", type=int, default=576)
p.add_argument("--lam", type=float, default=0.8)
p.add_argument("--alpha", type=float, default=1.0)
p.add_argument("--beta", type=float, default=1.0)
p.add_argument("--ed-weight", type=float, default=0.2)
p.add_argument("--ps-power", type=float, default=0.05)
p.add_argument("--gamma-position", type=float, default=0.3)
p.add_argument("--gamma-confidence", type=float, default=0.5)
p.add_argument("--gamma-consistency", type=float, default=0.1)
p.add_argument("--tau", type=float, default=1.0)
p.add_argument("--set", action="append", default=[], metavar="distill.KEY=VALUE",
               help="distillrec-style override (lambda, alpha, beta, ed_weight, ps_power, gamma_*, tau)")
a = p.parse_args()
SET_KEYS = {"lambda": "lam", "alpha": "alpha", "beta": "beta", "ed_weight": "ed_weight",
            "ps_power": "ps_power", "gamma_position": "gamma_position",
            "gamma_confidence": "gamma_confidence", "gamma_consistency": "gamma_consistency",
            "tau": "tau"}
for s in a.set:
    key, _, value = s.partition("=")
    name = key.removeprefix("distill.")
    if not key.startswith("distill.") or name not in SET_KEYS or not value:
        p.error(f"--set {s}: expected distill.KEY=VALUE with KEY in {', '.join(SET_KEYS)}")
    setattr(a, SET_KEYS[name], float(value))
assert 1 <= a.k <= a.items, "k must be between 1 and --items"
torch.set_num_threads(a.threads)
torch.manual_seed(0)
D, L, B, N, K, TD = a.hidden, a.len, a.batch, a.items, a.k, a.teacher_dim

model = SASRec(a.items, D, a.heads, a.layers, L)
params = list(model.parameters())
proj = None
if TD > 0 and a.ed_weight != 0:
    proj = nn.Linear(TD, D)  # W, b: trained
    params += list(proj.parameters())
opt = torch.optim.AdamW(params, lr=1e-3)
data = [torch.randint(1, a.items + 1, (B, L + 1)) for _ in range(4)]

# --- the synthetic teacher (fixed, outside the timed steps) ---
M = B * L if a.objective == "all_positions" else B  # supervised positions per batch
z = None
if proj is not None:
    z = torch.rand(N, TD) * 2 - 1  # LLM item embeddings of items 1..N (row 0, zero, never used)
counts = torch.randint(0, 1000, (N,)).double()
ps = ((counts + 1) / (counts + 1).sum()).pow(a.ps_power).float()  # [N], column j = item j+1
wp = torch.exp(-torch.arange(1, K + 1, dtype=torch.float64) / max(a.tau, 1e-12))
wp = wp / wp.sum()


def distinct_candidates(m):
    """[m, K] distinct random columns (item - 1) per row, in chunks (no [M, N] temporary)."""
    out = []
    for r in range(0, m, 512):
        out.append(torch.rand(min(512, m - r), N).topk(K, dim=1).indices)
    return torch.cat(out)


teacher = []  # per batch: candidate columns [M, K], student-independent weight part [M, K]
for _ in range(4):
    cols = distinct_candidates(M)
    dist = (torch.rand(M, K, dtype=torch.float64) * 5.5 + 0.5).sort(dim=1).values
    wc = torch.exp(-(dist - dist.min(dim=1, keepdim=True).values)) + 1e-8
    wc = wc / wc.sum(dim=1, keepdim=True)
    teacher.append((cols, (a.gamma_position * wp + a.gamma_confidence * wc).float()))


def item_table():
    e = model.items.weight
    if proj is None:
        return e
    return torch.cat([e[:1], e[1:] + a.ed_weight * proj(z)])


def step(i):
    seq = data[i % 4]
    cols, wbase = teacher[i % 4]
    table = item_table()
    h = model(seq[:, :L], table)
    if a.objective == "all_positions":
        h, tgt = h.reshape(-1, D), seq[:, 1:].reshape(-1)
    else:
        h, tgt = h[:, -1], seq[:, -1]
    s = h @ table[1:].t()  # [M, N]: padding column excluded
    tcol = (tgt - 1).unsqueeze(1)
    loss = F.cross_entropy(s, tcol.squeeze(1))
    per_row = s.new_zeros(M)
    if a.alpha != 0:
        sq = s.square()
        a_all = ps * sq / a.beta  # [M, N]
        lse = torch.logsumexp(a_all, dim=1, keepdim=True)

        def dro(c):  # DRO_r(j) for columns c [M, T] -> [M, T]
            rest = lse + torch.log1p(-torch.exp(a_all.gather(1, c) - lse).clamp(max=1 - 1e-6))
            return torch.logaddexp(rest, ps[c] * (s.gather(1, c) - 1).square() / a.beta)

        per_row = per_row + a.alpha * dro(tcol).squeeze(1)
    if a.lam != 0:
        with torch.no_grad():
            top = s.topk(K, dim=1).indices
            wo = (cols.unsqueeze(2) == top.unsqueeze(1)).any(dim=2).float() + 1e-8
        w = wbase + a.gamma_consistency * wo
        w = w / w.sum(dim=1, keepdim=True)
        neg = torch.randint(0, N, (M, 1))
        rd = (w * F.softplus(-s.gather(1, cols))).sum(1) + w.sum(1) * F.softplus(s.gather(1, neg).squeeze(1))
        if a.alpha != 0:
            rd = rd + a.alpha * (w * dro(cols)).sum(1)
        per_row = per_row + a.lam * rd
    loss = loss + per_row.sum() / M
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


for i in range(3):
    step(i)
t = time.perf_counter()
for i in range(a.steps):
    step(i)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def num(x):
    """A float as distillrec prints it (Rust's shortest form: 1.0 -> 1)."""
    r = repr(float(x))
    return r[:-2] if r.endswith(".0") else r


print(f"RESULT impl=torch objective={a.objective} heads={a.heads} items={a.items} len={L} batch={B} "
      f"k={K} teacher_dim={TD} lambda={num(a.lam)} alpha={num(a.alpha)} ed_weight={num(a.ed_weight)} "
      f"steps_per_s={a.steps / dt:.3f} ms_per_step={1000 * dt / a.steps:.1f} peak_rss_mb={rss:.0f}")
