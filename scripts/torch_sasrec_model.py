"""The SASRec of ../shared/bench/torch_sasrec_step.py as an importable module,
for the benchmark-only PyTorch references (bench_distill_torch.py,
bench_eval_torch.py). Same classes, same initialisation order; `forward`
optionally reads its item table from an argument (embedding distillation
replaces the table of the input lookup and of the scoring).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=0.2, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.2), nn.Linear(d, d), nn.Dropout(0.2))

    def forward(self, x, causal, pad):
        q = self.norm1(x)
        out, _ = self.attn(q, x, x, attn_mask=causal, need_weights=False)
        x = self.norm2(q + out)
        return (x + self.ff(x)) * pad


class SASRec(nn.Module):
    def __init__(self, items, d, heads, layers, max_len):
        super().__init__()
        self.d = d
        self.items = nn.Embedding(items + 1, d, padding_idx=0)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.2)
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1))

    def forward(self, seq, table=None):
        pad = (seq != 0).unsqueeze(-1).float()
        emb = self.items(seq) if table is None else F.embedding(seq, table, padding_idx=0)
        x = self.drop(emb * math.sqrt(self.d) + self.pos.weight) * pad
        for blk in self.blocks:
            x = blk(x, self.causal, pad)
        return self.norm(x)
