#!/usr/bin/env python3
"""PyTorch reference for `distillrec bench llm`: the three LLM-teacher steps.

One `--step` per process, so that the peak memory is the step's own:

  lm       causal-LM step: LM-head logits for positions 0..T-2, mean next-token
           cross-entropy over the positions whose next token is real (mask 1;
           this includes the last padded position, whose next token is the
           row's first real one), backward, AdamW over the adapters (for moe
           with Wg), zero_grad.
  teacher  ranking step: forward through the base transformer with the
           adapters (and, for moe, the gate), h = final-norm hidden state at
           position T-1, scores = (h @ M) @ I.T over `--items` items, mean
           cross-entropy against item (r*611 + 7) % items of row r, backward,
           AdamW over the adapters' A/B, Wg (moe) and M, zero_grad.
  infer    the teacher forward under no_grad in eval mode (adapters unmerged),
           scores over the item table, top `--topk`.

The LM-head logits are never computed in `teacher` and `infer`.

Inputs: row r, position j has id ((r*T + j) * 997 + 13) % vocab; the first
(r*5) % 17 positions of row r are left padding (id 0, mask 0), none for batch 1.
position_ids = (mask.cumsum(-1) - 1).clamp(min=0), so rotary positions start at
0 on each row's first real token.

Adapters, on every decoder layer's `--targets` (base weights frozen):
  lora  PEFT LoRA, rank r, scale alpha/r (alpha 2r by default), dropout 0.
  moe   MoE-LoRA (iLoRA): E experts share the rank, r/E each; A_cat [r, in]
        Kaiming-uniform (a=sqrt(5)), B_cat [out, r] zero, scale alpha/(r/E)
        (alpha 32 by default);
          y = base(x) + scale * ((x @ A_cat.T) * g.repeat_interleave(r/E)) @ B_cat.T
        = base(x) + scale * sum_e g[b,e] B_e A_e x, with the per-row gate
        g = softmax(z @ Wg), z [B, 64] fixed randn, Wg [64, E] trainable
        (randn * 0.02). The gate is recomputed at every step.
The lora adapter has no gate. Ranking head: I [items, H] fixed randn * 0.02,
M [H, H] trainable, identity at start.

Defaults: lm: batch 1, lora, 3 repeats; teacher: batch 8, moe with 4 experts,
3 repeats; infer: as teacher with 5 repeats. Experts default to 1 for lora (and
for moe in the lm step); rank 8, tokens 128, targets q,v, 2 threads.

Each step is warmed up once; the median of `--repeats` timed runs is reported.
A timed run covers the gate, the forward (use_cache=False, transformers'
default attention) and, for lm and teacher, loss, backward, AdamW step and
zero_grad; the inputs are built once, outside.
Output is one line on stdout (everything else goes to stderr):

  RESULT impl=pytorch step=... batch=B tokens=T adapter=... experts=E rank=r
         targets=q,v threads=N step_ms=... tok_s=... rows_s=... peak_mb=...

tok_s = B*T / step time and counts padded positions too; rows_s = B / step
time; peak_mb is ru_maxrss (MiB), so it includes loading the model.

    /work/torchenv/bin/python scripts/bench_llm_torch.py \
        --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --step teacher
"""
import argparse
import math
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

STEPS = ("lm", "teacher", "infer")
ADAPTERS = ("lora", "moe")
# Short target name -> (decoder-layer submodule, projection name).
TARGETS = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}
# Per-step defaults for the options whose default depends on the step.
STEP_DEFAULTS = {
    "lm": dict(batch=1, adapter="lora", experts=1, repeats=3),
    "teacher": dict(batch=8, adapter="moe", experts=4, repeats=3),
    "infer": dict(batch=8, adapter="moe", experts=4, repeats=5),
}
GATE_DIM = 64
LR = 1e-4


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--gguf", required=True, help="path of the GGUF model")
    ap.add_argument("--step", choices=STEPS, required=True)
    ap.add_argument("--adapter", choices=ADAPTERS, help="lm: lora, else moe")
    ap.add_argument("--experts", type=int, help="lm or lora: 1, else 4")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, help="lora: 2*rank, moe: 32")
    ap.add_argument("--targets", default="q,v", help="comma list of " + ",".join(TARGETS))
    ap.add_argument("--batch", type=int, help="lm: 1, else 8")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, help="lm, teacher: 3; infer: 5")
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--topk", type=int, default=20)
    a = ap.parse_args(argv)
    if a.adapter == "lora" and a.experts is None:
        a.experts = 1  # not the step's 4
    for key, value in STEP_DEFAULTS[a.step].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.alpha is None:
        a.alpha = 2.0 * a.rank if a.adapter == "lora" else 32.0
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = [t for t in a.targets if t not in TARGETS]
    if unknown or not a.targets:
        ap.error(f"--targets: unknown {unknown}, expected a comma list of {','.join(TARGETS)}")
    for key in ("batch", "tokens", "threads", "repeats", "items", "topk", "rank", "experts"):
        if getattr(a, key) < 1:
            ap.error(f"--{key} must be at least 1")
    if a.adapter == "lora" and a.experts != 1:
        ap.error("--adapter lora has one expert (--experts 1); use --adapter moe")
    if a.rank % a.experts:
        ap.error(f"--experts {a.experts} does not divide --rank {a.rank}")
    if a.topk > a.items:
        ap.error("--topk must not exceed --items")
    # Every row needs a real last position and, for lm, a real next token.
    max_pad = max(pad_of(r) for r in range(a.batch))
    if a.tokens < max_pad + 2:
        ap.error(f"--tokens must be at least {max_pad + 2} for batch {a.batch} (left padding)")
    return a


def pad_of(row):
    return (row * 5) % 17


def make_inputs(batch, tokens, vocab):
    """Token ids, attention mask and position ids (all [B, T], int64)."""
    r = torch.arange(batch)[:, None]
    j = torch.arange(tokens)[None, :]
    ids = ((r * tokens + j) * 997 + 13) % vocab
    pads = torch.tensor([pad_of(i) for i in range(batch)])  # row 0: none
    mask = (j >= pads[:, None]).long()
    ids = ids * mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


class MoeLoraLinear(nn.Module):
    """A frozen nn.Linear plus E gated LoRA experts of rank r/E each."""

    def __init__(self, base, rank, experts, alpha):
        super().__init__()
        self.base = base
        self.per_expert = rank // experts
        self.scale = alpha / self.per_expert
        self.a = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.gate = None  # [B, E], set before each forward

    def forward(self, x):
        g = self.gate.repeat_interleave(self.per_expert, dim=1)[:, None, :]
        return self.base(x) + self.scale * (((x @ self.a.t()) * g) @ self.b.t())


class Gate(nn.Module):
    """Per-row expert weights g = softmax(z @ Wg) for a fixed z [B, 64]."""

    def __init__(self, batch, experts):
        super().__init__()
        self.register_buffer("z", torch.randn(batch, GATE_DIM))
        self.w = nn.Parameter(torch.randn(GATE_DIM, experts) * 0.02)

    def forward(self):
        return F.softmax(self.z @ self.w, dim=-1)


class RankingHead(nn.Module):
    """scores = (h @ M) @ I.T with a fixed item table I and M = identity at start."""

    def __init__(self, items, hidden):
        super().__init__()
        self.register_buffer("items", torch.randn(items, hidden) * 0.02)
        self.m = nn.Parameter(torch.eye(hidden))

    def forward(self, h):
        return (h @ self.m) @ self.items.t()


def load_model(path):
    from transformers import AutoModelForCausalLM

    d, name = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def add_adapters(model, a):
    """Wraps the targets in place; returns the MoE modules (empty for lora)."""
    if a.adapter == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=a.rank,
            lora_alpha=a.alpha,
            target_modules=[TARGETS[t][1] for t in a.targets],
            lora_dropout=0.0,
            bias="none",
        )
        get_peft_model(model, cfg)  # injects into `model` in place
        return []
    moes = []
    for layer in model.model.layers:
        for t in a.targets:
            parent_name, proj = TARGETS[t]
            parent = getattr(layer, parent_name)
            m = MoeLoraLinear(getattr(parent, proj), a.rank, a.experts, a.alpha)
            setattr(parent, proj, m)
            moes.append(m)
    return moes


def build_step(a, lr=LR):
    """Loads the model and returns step(), which runs one timed step and
    returns the loss (lm, teacher) or the top-k item indices (infer)."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = load_model(a.gguf)
    cfg = model.config
    ids, mask, pos = make_inputs(a.batch, a.tokens, cfg.vocab_size)
    moes = add_adapters(model, a)
    gate = Gate(a.batch, a.experts) if a.adapter == "moe" else None
    head = RankingHead(a.items, cfg.hidden_size) if a.step != "lm" else None
    log(
        f"# {a.step}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}; adapter {a.adapter} E={a.experts} r={a.rank} "
        f"alpha={a.alpha:g} on {','.join(a.targets)}; left pads {(1 - mask).sum(-1).tolist()}"
    )

    def set_gate():
        if gate is not None:
            g = gate()
            for m in moes:
                m.gate = g

    def last_hidden():
        set_gate()
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state

    params = [p for p in model.parameters() if p.requires_grad]
    for extra in (gate, head):
        if extra is not None:
            params += list(extra.parameters())
    log(f"# trainable parameters: {sum(p.numel() for p in params)}")

    if a.step == "infer":
        model.eval()

        def step():
            with torch.no_grad():
                scores = head(last_hidden()[:, -1])
                return torch.topk(scores, a.topk).indices

        return step

    model.train()
    opt = torch.optim.AdamW(params, lr=lr)
    if a.step == "lm":
        target = ids[:, 1:]
        keep = mask[:, 1:].bool()

        def loss_fn():
            logits = model.lm_head(last_hidden()[:, :-1])
            return F.cross_entropy(logits[keep], target[keep])

    else:
        rows = torch.arange(a.batch)
        target = (rows * 611 + 7) % a.items

        def loss_fn():
            return F.cross_entropy(head(last_hidden()[:, -1]), target)

    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return step


def main(argv=None):
    a = parse_args(argv)
    step = build_step(a)
    out = step()  # warm-up
    if a.step != "infer":
        log(f"# warm-up loss {out.item():.4f}")
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t)
    if a.step != "infer":
        log(f"# last loss {out.item():.4f}")
    s = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(
        f"RESULT impl=pytorch step={a.step} batch={a.batch} tokens={a.tokens} "
        f"adapter={a.adapter} experts={a.experts} rank={a.rank} targets={','.join(a.targets)} "
        f"threads={a.threads} step_ms={s * 1e3:.1f} tok_s={a.batch * a.tokens / s:.1f} "
        f"rows_s={a.batch / s:.1f} peak_mb={peak_mb:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
