#!/usr/bin/env python3
"""PyTorch reference for `distillrec bench llm` (same RESULT line format).

Loads the same GGUF through transformers (dequantized to f32), uses the same
token ids ((i * 997 + 13) mod vocab), and times:
  - prefill: one forward over `--tokens` tokens, logits of the last position
    only (`logits_to_keep=1`), under no_grad;
  - one LoRA training step: rank-8 adapters (alpha 16) on q_proj and v_proj of
    every layer, frozen base weights, mean next-token cross-entropy over all
    positions, backward, AdamW on the adapters.
Each is warmed up once; the median of `--repeats` runs is reported.

    /work/torchenv/bin/python scripts/bench_llm_torch.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --tokens 128
"""
import argparse
import math
import os
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


class LoraLinear(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.empty(rank, base.in_features))
        torch.nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    d, name = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 997 + 13) % vocab for i in range(a.tokens)]])

    def prefill():
        with torch.no_grad():
            return model(ids, logits_to_keep=1).logits

    prefill()
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        prefill()
        times.append(time.perf_counter() - t)
    p = statistics.median(times)

    for prm in model.parameters():
        prm.requires_grad_(False)
    for layer in model.model.layers:
        att = layer.self_attn
        att.q_proj = LoraLinear(att.q_proj, a.lora_rank, 2 * a.lora_rank)
        att.v_proj = LoraLinear(att.v_proj, a.lora_rank, 2 * a.lora_rank)
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step():
        logits = model(ids).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step()
    times = []
    for _ in range(max(1, min(a.repeats, 3))):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"RESULT impl=torch model={name} tokens={a.tokens} threads={torch.get_num_threads()} "
        f"prefill_tok_s={a.tokens / p:.1f} train_tok_s={a.tokens / s:.1f} "
        f"prefill_ms={p * 1e3:.1f} train_step_ms={s * 1e3:.1f} peak_rss={rss}kB"
    )


if __name__ == "__main__":
    main()
