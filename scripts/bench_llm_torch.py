#!/usr/bin/env python3
"""PyTorch reference for `distillrec bench llm`, one `--step` per process
(so that the peak memory is the step's own):
  lm       the plain LoRA causal-LM step against PEFT: LM-head logits for
           positions 0..T-2, mean next-token cross-entropy over the positions
           whose next token is real, backward, AdamW over the adapters,
           zero_grad. Inputs: row r, position j has id ((r*T + j) * 997 + 13)
           % vocab; the first (r*5) % 17 positions of row r are left padding
           (none for batch 1). Loaded with transformers, adapters by PEFT
           (rank r, scale alpha/r, alpha 2r by default, dropout 0).
  teacher  the distillrec teacher's training micro-step and AdamW update, on
           the inputs and initial weights `distillrec bench llm --step teacher
           --dump FILE` wrote (so both compute the same step):
             gate g = softmax(W2 gelu(W0 z + b0) + b2) on the frozen student's
               sequence representation z [B, d] (hidden teacher.gate_hidden);
             projector P(e) = V2 gelu(V0 e + c0) + c2 (student dim -> LLM
               hidden), its outputs replacing the embeddings at the
               placeholder positions;
             MoE-LoRA on every layer's targets: E experts share the rank r,
               y = base(x) + alpha/(r/E) * ((x A.T) * g.repeat_interleave(r/E)) B.T;
             ranking: the final-norm hidden state h of the last position,
               item table T M + P(e_all) (T frozen title embeddings, M
               trained), scores = exp(log_scale) * cos(h, table), column 0
               (padding) -1e9, mean cross-entropy against the target item;
             generative: mean cross-entropy of the answer tokens (causal LM,
               tied LM head);
           backward, AdamW (lr 1e-4, weight decay 0.01) over A, B and every
           network parameter, zero_grad.
  infer    the teacher's inference on the dump of `--step infer`: ranking:
           the table, scores of each row's last position, top `--topk`;
           generative: greedy decoding of each row's prompt with a KV cache,
           at most 64 new tokens, stopping at a newline or end-of-sequence.
The teacher steps build the Llama decoder themselves from the GGUF (weights
dequantized with the `gguf` package, rotary embedding on adjacent pairs as
the GGUF layout stores q/k, grouped-query attention, RMSNorm, SwiGLU), in
float32; position ids start at 0 on each row's first real token.
`--random-weights-config CONFIG.json` replaces the GGUF of the teacher
steps with random weights of that Llama shape (timing only: the weights are
not distillrec's, so no --check); `--device cuda` and `--dtype bf16` hold the
frozen decoder on the GPU in bf16 (activations bf16, RMSNorm statistics,
adapters, gate, projector, head and loss in float32, as PEFT keeps its
adapters), and the times are taken after a CUDA synchronisation. The default
`--device cpu --dtype f32` is the computation described above, unchanged.
`--check` prints the losses of the first two training steps next to
distillrec's (the dump's `first_loss`, `second_loss`; the second comes after
one AdamW update, when the adapters' B is no longer zero and the gate
matters) and fails beyond 1e-3 relative.
Each step is warmed up once; the median of `--repeats` timed runs is reported.
Output is one line on stdout (everything else goes to stderr):
  RESULT impl=pytorch step=... batch=B tokens=T adapter=... experts=E rank=r
         targets=q,v threads=N step_ms=... tok_s=... rows_s=... peak_mb=...
         [objective=... items=N prompt_tokens=...]
tok_s = B * (mean real tokens per row) / step time (lm: B*T, padding
included); rows_s = B / step time; peak_mb is ru_maxrss (MiB); on CUDA also
cuda_alloc_mb (torch.cuda.max_memory_allocated, MiB).

    distillrec bench llm --model M.gguf --step teacher --dump /tmp/t.st
    /work/torchenv/bin/python scripts/bench_llm_torch.py \
        --gguf M.gguf --step teacher --dump /tmp/t.st --check
"""
import argparse
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

STEPS = ("lm", "teacher", "infer")

# Short target name -> (decoder-layer submodule, projection name) in
# transformers, and the GGUF tensor of the projection.
TARGETS = {
    "q": ("self_attn", "q_proj", "attn_q"),
    "k": ("self_attn", "k_proj", "attn_k"),
    "v": ("self_attn", "v_proj", "attn_v"),
    "o": ("self_attn", "o_proj", "attn_output"),
    "gate": ("mlp", "gate_proj", "ffn_gate"),
    "up": ("mlp", "up_proj", "ffn_up"),
    "down": ("mlp", "down_proj", "ffn_down"),
}

LR = 1e-4
MAX_NEW_TOKENS = 64


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--gguf", help="path of the GGUF model")
    ap.add_argument("--random-weights-config", metavar="CONFIG_JSON",
                    help="teacher, infer: random weights of this Llama config.json instead of --gguf")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="f32",
                    help="the frozen decoder's dtype (bf16 needs --device cuda)")
    ap.add_argument("--step", choices=STEPS, required=True)
    ap.add_argument("--dump", help="teacher, infer: the file `distillrec bench llm --dump` wrote")
    ap.add_argument("--check", action="store_true", help="teacher: compare the first loss with distillrec's")
    ap.add_argument("--rank", type=int, default=8, help="lm")
    ap.add_argument("--alpha", type=float, help="lm: 2*rank")
    ap.add_argument("--targets", default="q,v", help="lm: comma list of " + ",".join(TARGETS))
    ap.add_argument("--batch", type=int, help="lm: 1 (teacher, infer: the dump's)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, help="lm, teacher: 3; infer: 5")
    # accepted so that the same extra arguments go to both implementations
    ap.add_argument("--adapter", choices=("lora", "moe"), help="lm: lora only")
    ap.add_argument("--experts", type=int, help="ignored (the dump's)")
    ap.add_argument("--items", type=int, help="ignored (the dump's)")
    ap.add_argument("--topk", type=int, default=20, help="infer (ranking)")
    ap.add_argument("--objective", help="ignored (the dump's)")
    a = ap.parse_args(argv)
    if a.repeats is None:
        a.repeats = 5 if a.step == "infer" else 3
    if (a.gguf is None) == (a.random_weights_config is None):
        ap.error("give one of --gguf and --random-weights-config")
    if a.random_weights_config and (a.step == "lm" or a.check):
        ap.error("--random-weights-config is for timing --step teacher and infer (no --check)")
    if a.dtype == "bf16" and not a.device.startswith("cuda"):
        ap.error("--dtype bf16 is for --device cuda")
    if a.step == "lm" and a.device != "cpu":
        ap.error("--step lm runs on the CPU")
    if a.step == "lm":
        if a.adapter == "moe":
            ap.error("--step lm compares plain LoRA with PEFT; the MoE-LoRA is in --step teacher")
        a.batch = a.batch or 1
        a.alpha = a.alpha if a.alpha is not None else 2.0 * a.rank
        a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
        unknown = [t for t in a.targets if t not in TARGETS]
        if unknown or not a.targets:
            ap.error(f"--targets: unknown {unknown}, expected a comma list of {','.join(TARGETS)}")
        max_pad = max(pad_of(r) for r in range(a.batch))
        if a.tokens < max_pad + 2:
            ap.error(f"--tokens must be at least {max_pad + 2} for batch {a.batch} (left padding)")
    elif not a.dump:
        ap.error(f"--step {a.step} needs --dump FILE from `distillrec bench llm --step {a.step} --dump FILE`")
    for key in ("tokens", "threads", "repeats", "topk", "rank"):
        if getattr(a, key) < 1:
            ap.error(f"--{key} must be at least 1")
    return a


# ---------------------------------------------------------------- lm (PEFT)

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


def build_lm_step(a):
    """The plain LoRA causal-LM step on transformers + PEFT."""
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    d, name = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none",
                     target_modules=[TARGETS[t][1] for t in a.targets])
    get_peft_model(model, cfg)  # injects into `model` in place
    ids, mask, pos = make_inputs(a.batch, a.tokens, model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    opt = torch.optim.AdamW(params, lr=LR)
    target, keep = ids[:, 1:], mask[:, 1:].bool()

    def step():
        h = model.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                        use_cache=False).last_hidden_state
        loss = F.cross_entropy(model.lm_head(h[:, :-1])[keep], target[keep])
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return step, a.batch * a.tokens


# ------------------------------------------------------- the teacher's step

def read_dump(path):
    """The tensors and metadata of a safetensors file (no extra package)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": torch.float32, "I64": torch.int64}
    out = {}
    for k, v in header.items():
        s, e = v["data_offsets"]
        if s == e:
            out[k] = torch.zeros(v["shape"], dtype=dtypes[v["dtype"]])
            continue
        buf = bytearray(raw[8 + n + s:8 + n + e])
        out[k] = torch.frombuffer(buf, dtype=dtypes[v["dtype"]]).reshape(v["shape"]).clone()
    return out, meta


def gguf_weights(path):
    """Every tensor of the GGUF file dequantized to float32, by name."""
    import gguf
    r = gguf.GGUFReader(path)
    def field(k):
        f = r.fields[k]
        return f.parts[f.data[0]][0]
    cfg = dict(
        layers=int(field("llama.block_count")),
        heads=int(field("llama.attention.head_count")),
        kv_heads=int(field("llama.attention.head_count_kv")),
        theta=float(field("llama.rope.freq_base")),
        eps=float(field("llama.attention.layer_norm_rms_epsilon")),
    )
    w = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        x = gguf.quants.dequantize(t.data, t.tensor_type)
        w[t.name] = torch.from_numpy(x.astype("float32").reshape(shape).copy())
    return w, cfg


def random_weights(path, device, dtype):
    """Random weights (seeded, scaled 1/sqrt(fan-in)) of the Llama of a
    config.json, named as in a GGUF file, created on `device` in `dtype`."""
    with open(path) as f:
        c = json.load(f)
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads) * (h // heads)
    cfg = dict(layers=c["num_hidden_layers"], heads=heads, kv_heads=c.get("num_key_value_heads", heads),
               theta=float(c.get("rope_theta", 10000.0)), eps=float(c.get("rms_norm_eps", 1e-5)))
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype) / math.sqrt(shape[-1])

    ones = lambda: torch.ones(h, device=device, dtype=dtype)  # noqa: E731
    w = {"token_embd.weight": rand(vocab, h), "output_norm.weight": ones()}
    if not c.get("tie_word_embeddings", False):
        w["output.weight"] = rand(vocab, h)
    shapes = {"attn_q": (h, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, h),
              "ffn_gate": (inter, h), "ffn_up": (inter, h), "ffn_down": (h, inter)}
    for i in range(cfg["layers"]):
        w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.ffn_norm.weight"] = ones(), ones()
        for name, shape in shapes.items():
            w[f"blk.{i}.{name}.weight"] = rand(*shape)
    return w, cfg


class Adapted(nn.Module):
    """A frozen linear layer with the teacher's MoE-LoRA (A [r, in], B [out, r])."""

    def __init__(self, weight, a, b, experts, alpha):
        super().__init__()
        self.register_buffer("w", weight)
        self.a, self.b = nn.Parameter(a), nn.Parameter(b)
        self.per_expert = a.shape[0] // experts
        self.scale = alpha / self.per_expert
        self.gate = None  # [B, E] (None: one expert), set before each forward

    def forward(self, x):
        # the adapter in float32 (a no-op cast for a float32 decoder)
        u = x.to(self.a.dtype) @ self.a.t()
        if self.gate is not None:
            u = u * self.gate.repeat_interleave(self.per_expert, dim=1)[:, None, :]
        return x @ self.w.t() + (self.scale * (u @ self.b.t())).to(x.dtype)


class Frozen(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.register_buffer("w", weight)

    def forward(self, x):
        return x @ self.w.t()


def rms(x, w, eps):
    """RMSNorm, its statistics in float32 (no-op casts for float32 x)."""
    y = x.float()
    return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, pos, theta):
    """Rotary embedding on adjacent pairs (the GGUF layout of q and k)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = pos[..., None].float() * inv  # [B, T, d/2]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2).to(x.dtype)


class Llama(nn.Module):
    """The decoder of a GGUF Llama with the teacher's adapters on `targets`."""

    def __init__(self, w, cfg, params, meta):
        super().__init__()
        self.cfg = cfg
        self.embed = w["token_embd.weight"]
        self.head = w.get("output.weight", self.embed)
        self.norm = w["output_norm.weight"]
        experts, alpha = int(meta["experts"]), float(meta["alpha"])
        targets = meta["targets"].split(",")
        self.adapted = []
        self.layers = []
        for i in range(cfg["layers"]):
            layer = {"attn_norm": w[f"blk.{i}.attn_norm.weight"], "ffn_norm": w[f"blk.{i}.ffn_norm.weight"]}
            for short, (_, _, g) in TARGETS.items():
                weight = w[f"blk.{i}.{g}.weight"]
                if short in targets:
                    m = Adapted(weight, params[f"adapter.{i}.{short}.lora_A"],
                                params[f"adapter.{i}.{short}.lora_B"], experts, alpha)
                    self.adapted.append(m)
                else:
                    m = Frozen(weight)
                layer[short] = m
            self.layers.append(layer)
        self.adapter_params = nn.ParameterList([p for m in self.adapted for p in (m.a, m.b)])

    def set_gate(self, g):
        for m in self.adapted:
            m.gate = g

    def forward(self, x, mask, pos, cache=None):
        """Final-norm hidden states of input embeddings x [B, T, H]; with
        `cache` (a list, one (k, v) per layer, filled in place) x continues it."""
        c = self.cfg
        b, t, h = x.shape
        nh, nkv = c["heads"], c["kv_heads"]
        hd = h // nh
        if cache is None or not cache:
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            allow = causal[None] & mask.bool()[:, None, :]
            allow = allow | torch.eye(t, dtype=torch.bool, device=x.device)[None]  # pads see themselves
            allow = allow[:, None]
        else:
            allow = None  # one new token attends to everything cached
        for i, L in enumerate(self.layers):
            y = rms(x, L["attn_norm"], c["eps"])
            q = rope(L["q"](y).view(b, t, nh, hd).transpose(1, 2), pos, c["theta"])
            k = rope(L["k"](y).view(b, t, nkv, hd).transpose(1, 2), pos, c["theta"])
            v = L["v"](y).view(b, t, nkv, hd).transpose(1, 2)
            if cache is not None:
                if len(cache) > i:
                    k = torch.cat((cache[i][0], k), 2)
                    v = torch.cat((cache[i][1], v), 2)
                    cache[i] = (k, v)
                else:
                    cache.append((k, v))
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allow)
            x = x + L["o"](o.transpose(1, 2).reshape(b, t, h))
            y = rms(x, L["ffn_norm"], c["eps"])
            x = x + L["down"](F.silu(L["gate"](y)) * L["up"](y))
        return rms(x, self.norm, c["eps"])


def mlp(x, p, name):
    y = F.gelu(x @ p[f"{name}.0.weight"] + p[f"{name}.0.bias"])
    return y @ p[f"{name}.2.weight"] + p[f"{name}.2.bias"]


def unit(x):
    return x / (x.pow(2).sum(1, keepdim=True) + 1e-12).sqrt()


class TeacherStep:
    """The teacher's computation on a dump: loss or inference."""

    def __init__(self, a):
        d, self.meta = read_dump(a.dump)
        self.dev = torch.device(a.device)
        d = {k: v.to(self.dev) for k, v in d.items()}
        self.d = d
        dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
        if a.random_weights_config:
            w, cfg = random_weights(a.random_weights_config, self.dev, dtype)
        else:
            w, cfg = gguf_weights(a.gguf)
            w = {k: v.to(self.dev, dtype) for k, v in w.items()}
        self.params = {k[len("param."):]: v for k, v in d.items() if k.startswith("param.")}
        self.nets = {k: nn.Parameter(v) for k, v in self.params.items() if not k.startswith("adapter.")}
        self.model = Llama(w, cfg, self.params, self.meta)
        self.objective = self.meta["objective"]
        self.mask = d["attention_mask"]
        self.pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.topk = a.topk
        log(f"# {self.meta['step']} {self.objective}: {cfg['layers']} layers, B={self.mask.shape[0]} "
            f"T={self.mask.shape[1]}, {d['titles'].shape[0] - 1} items, adapters on {self.meta['targets']} "
            f"E={self.meta['experts']} r={self.meta['rank']} alpha={self.meta['alpha']}")

    def gate(self, z):
        if int(self.meta["experts"]) == 1:
            return None
        return F.softmax(mlp(z, self.nets, "gate"), -1)

    def table(self, projected):
        return self.d["titles"] @ self.nets["head.map"] + projected

    def embeds(self, projected_of_slots):
        d = self.d
        x = F.embedding(d["input_ids"], self.model.embed)
        b, t, h = x.shape
        x = x.reshape(b * t, h).index_copy(0, d["slot_pos"], projected_of_slots.to(x.dtype))
        return x.reshape(b, t, h)

    def loss(self):
        d, gen = self.d, self.objective == "generative"
        self.model.set_gate(self.gate(d["student_rep"]))
        if gen:
            p_slots = mlp(d["student_items"][d["slot_item"]], self.nets, "projector")
        else:
            p_all = mlp(d["student_items"], self.nets, "projector")
            p_slots = p_all[d["slot_item"]]
        hid = self.model(self.embeds(p_slots), self.mask, self.pos)
        if gen:
            flat = hid.reshape(-1, hid.shape[-1])[d["answer_pos"]]
            return F.cross_entropy((flat @ self.model.head.t()).float(), d["answer_tok"])
        scores = unit(hid[:, -1].float()) @ unit(self.table(p_all)).t() * self.nets["head.log_scale"].exp()
        scores[:, 0] += -1e9
        return F.cross_entropy(scores, d["targets"])

    def trainer(self):
        params = list(self.model.adapter_params) + list(self.nets.values())
        opt = torch.optim.AdamW(params, lr=float(self.meta["lr"]),
                                weight_decay=float(self.meta["weight_decay"]))

        def step():
            loss = self.loss()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.detach()
        return step

    @torch.no_grad()
    def rank(self):
        d = self.d
        self.model.set_gate(self.gate(d["student_rep"]))
        table = self.table(mlp(d["student_items"], self.nets, "projector"))
        p_slots = mlp(d["student_items"][d["slot_item"]], self.nets, "projector")
        hid = self.model(self.embeds(p_slots), self.mask, self.pos)
        scores = unit(hid[:, -1].float()) @ unit(table).t() * self.nets["head.log_scale"].exp()
        scores[:, 0] += -1e9
        return torch.topk(scores, self.topk).indices

    @torch.no_grad()
    def answers(self):
        d = self.d
        gates = self.gate(d["student_rep"])
        p_slots = mlp(d["student_items"][d["slot_item"]], self.nets, "projector")
        x_all = self.embeds(p_slots)
        stop = {int(t) for t in self.meta.get("newline", "").split(",") if t}
        if self.meta.get("eos"):
            stop.add(int(self.meta["eos"]))
        out = []
        for r in range(x_all.shape[0]):
            self.model.set_gate(None if gates is None else gates[r:r + 1])
            keep = self.mask[r].bool()
            x = x_all[r:r + 1, keep]
            n = x.shape[1]
            cache = []
            hid = self.model(x, torch.ones(1, n, dtype=torch.long, device=self.dev),
                             torch.arange(n, device=self.dev)[None], cache)
            toks = []
            for _ in range(MAX_NEW_TOKENS):
                tok = int((hid[0, -1] @ self.model.head.t()).argmax())
                if tok in stop:
                    break
                toks.append(tok)
                if len(toks) == MAX_NEW_TOKENS:
                    break
                e = self.model.embed[tok][None, None]
                hid = self.model(e, None, torch.tensor([[n + len(toks) - 1]], device=self.dev), cache)
            out.append(toks)
        return out

    def real_tokens(self):
        return int(self.mask.sum())


def check(ts, step):
    """The first two training losses (the second after one AdamW update,
    when B is no longer zero and the gate matters) against distillrec's."""
    bad = []
    for key in ("first_loss", "second_loss"):
        mine = float(step())
        theirs = float(ts.meta[key])
        rel = abs(mine - theirs) / max(abs(theirs), 1e-12)
        print(f"CHECK {key} pytorch={mine:.6f} distillrec={theirs:.6f} rel={rel:.2e}", flush=True)
        if rel > 1e-3:
            bad.append(key)
    if bad:
        sys.exit(f"{', '.join(bad)}: pytorch and distillrec differ by more than 1e-3 relative")


def build_teacher_step(a):
    ts = TeacherStep(a)
    if ts.meta["step"] != a.step:
        sys.exit(f"{a.dump} holds the inputs of --step {ts.meta['step']}, not {a.step}")
    if a.step == "teacher":
        step = ts.trainer()
        if a.check:
            check(ts, step)
            ts = TeacherStep(a)  # the timed runs start from the dump's weights
            step = ts.trainer()
    elif ts.objective == "generative":
        step = ts.answers
    else:
        step = ts.rank
    return step, ts


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ts = None
    if a.step == "lm":
        step, tokens = build_lm_step(a)
    else:
        step, ts = build_teacher_step(a)
        a.batch = ts.mask.shape[0]
        tokens = ts.real_tokens()
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = step()  # warm-up
    if a.step != "infer":
        log(f"# warm-up loss {out.item():.4f}")
    times = []
    for _ in range(a.repeats):
        sync()
        t = time.perf_counter()
        out = step()
        sync()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    gpu = f" cuda_alloc_mb={torch.cuda.max_memory_allocated() / 2**20:.1f}" if cuda else ""
    if ts is None:
        cfg = f"adapter=lora experts=1 rank={a.rank} targets={','.join(a.targets)}"
        extra = ""
    else:
        m = ts.meta
        cfg = (f"adapter={'lora' if m['experts'] == '1' else 'moe'} experts={m['experts']} "
               f"rank={m['rank']} targets={m['targets']}")
        extra = (f" objective={ts.objective} items={ts.d['titles'].shape[0] - 1} "
                 f"prompt_tokens={tokens / a.batch:.1f}")
    print(
        f"RESULT impl=pytorch step={a.step} batch={a.batch} tokens={a.tokens} {cfg} "
        f"threads={a.threads} step_ms={s * 1e3:.1f} tok_s={tokens / s:.1f} "
        f"rows_s={a.batch / s:.1f} peak_mb={peak_mb:.1f}{gpu}{extra}",
        flush=True,
    )


if __name__ == "__main__":
    main()
