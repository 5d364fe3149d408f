#!/usr/bin/env python3
"""Helpers of scripts/device-check.sh (the GPU check), one subcommand each:

  tiny DIR
      a tiny random-weight Llama as a Hugging Face directory: config.json,
      model.safetensors (seeded), tokenizer.json (byte-level BPE with the
      SmolLM2 control tokens, as the Rust tests write it) and
      tokenizer_config.json (the SmolLM2 chat template).
  compare REF OTHER --dtype f32|bf16 --label NAME
      CPU/CUDA agreement of two `bench llm --grads-out` files: `loss`, every
      `grad.*` and `scores` tensor. f32: max|a-b| / max|ref| <= 1e-3 per
      tensor (loss: relative error <= 1e-3). bf16: the norms within 5e-2
      relative and cosine > 0.99 per tensor (loss within 5e-2). A tensor that
      is zero in the reference must be zero (<= 1e-6) in the other. Scores
      of -1e8 or less in the reference (the masked padding item) are left
      out. Prints one AGREE line per tensor and a summary; exit status 1 when
      one fails.
  selftest
      checks compare's rules on made-up tensors (identical, perturbed by 1%,
      zero, masked padding scores, non-finite) and exits 1 if one is wrong.
  summary LOG OUT.json
      the lines device-check.sh collected (AGREE, RESULT with a `shape=`
      label, PLAN, GPU) as one JSON file, with the speed ratios
      (distillrec / pytorch tokens per second) and each timed step's share
      of the GPU's bf16 peak.

Needs torch and safetensors (the GPU machine's python3 has both); `tiny`
also needs the tokenizers package.

FLOPs per step (stated in the results): P = the parameters of the decoder
layers (embedding and LM head excluded: the ranking head reads the last
hidden state, the embedding is a lookup), N = real prompt tokens of the
batch (rows x prompt_tokens). Training with a frozen base: 4 P N (forward
2 P N, gradients of the inputs 2 P N; no weight gradients of the base;
adapters and attention scores left out). Inference: 2 P N.
"""
import argparse
import json
import math
import os
import sys

PEAK_BF16 = 790e12  # H100 SXM dense bf16, FLOP/s

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"),
          ("o", "n"), ("e", "r"), ("Ġ", "s"), ("a", "t"), ("Ġ", "w")]
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROJ = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
        "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
        "down": "mlp.down_proj"}


# ------------------------------------------------------------------ tiny

def write_tokenizer(d):
    """tokenizer.json: control tokens, the 256 byte symbols, ten merges."""
    from tokenizers import Tokenizer, AddedToken, decoders, pre_tokenizers
    from tokenizers.models import BPE
    tokens = list(SPECIALS) + sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += [a + b for a, b in MERGES]
    tok = Tokenizer(BPE({t: i for i, t in enumerate(tokens)}, MERGES))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    tok.save(os.path.join(d, "tokenizer.json"))
    return len(tokens)


def tiny(a):
    import torch
    from safetensors.torch import save_file
    os.makedirs(a.dir, exist_ok=True)
    vocab = write_tokenizer(a.dir)
    h, inter, layers = 64, 96, 2
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "vocab_size": vocab, "hidden_size": h, "intermediate_size": inter,
           "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 2,
           "torch_dtype": "float32"}
    g = torch.Generator().manual_seed(a.seed)
    kv = h // 4 * 2
    shapes = {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h),
              "gate": (inter, h), "up": (inter, h), "down": (h, inter)}
    w = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=g) * 0.1,
         "model.norm.weight": 1 + 0.1 * torch.randn(h, generator=g)}
    for i in range(layers):
        for n in ("input_layernorm", "post_attention_layernorm"):
            w[f"model.layers.{i}.{n}.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        for short, name in PROJ.items():
            out, inp = shapes[short]
            w[f"model.layers.{i}.{name}.weight"] = torch.randn(out, inp, generator=g) / math.sqrt(inp)
    save_file({k: v.contiguous() for k, v in w.items()}, os.path.join(a.dir, "model.safetensors"))
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(a.dir, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": SMOL_TEMPLATE, "eos_token": "<|im_end|>"}, f)
    print(f"tiny backbone: {layers} layers, hidden {h}, vocab {vocab} -> {a.dir}")


# --------------------------------------------------------------- compare

def tensor_check(name, ref, other, dtype):
    """(passed, text) of one tensor pair."""
    import torch
    ref, other = ref.double().flatten(), other.double().flatten()
    if ref.shape != other.shape:
        return False, f"shape {tuple(ref.shape)} vs {tuple(other.shape)}"
    if name == "scores":
        keep = ref > -1e8
        ref, other = ref[keep], other[keep]
    if not bool(torch.isfinite(other).all()):
        return False, "non-finite values"
    rn, on = float(ref.norm()), float(other.norm())
    if rn == 0.0:
        dev = float(other.abs().max()) if other.numel() else 0.0
        return dev <= 1e-6, f"zero in the reference, max|other| {dev:.2e}"
    if dtype == "f32" or name == "loss":
        tol = 1e-3 if dtype == "f32" else 5e-2
        rel = float((ref - other).abs().max() / ref.abs().max())
        return rel <= tol, f"max rel err {rel:.2e} (<= {tol:g})"
    norm_rel = abs(on - rn) / rn
    cos = float(ref @ other) / (rn * on) if on > 0 else 0.0
    return norm_rel <= 5e-2 and cos > 0.99, f"norm rel err {norm_rel:.2e} (<= 5e-2), cosine {cos:.5f} (> 0.99)"


def compare(a):
    from safetensors.torch import load_file
    ref, other = load_file(a.ref), load_file(a.other)
    names = sorted(k for k in ref if k in ("loss", "scores") or k.startswith("grad."))
    missing = sorted(set(names) - set(other))
    if not names:
        sys.exit(f"{a.ref}: no loss, grad.* or scores tensor")
    failed = list(missing)
    zero = 0
    for n in names:
        if n in missing:
            print(f"AGREE label={a.label} dtype={a.dtype} tensor={n} ok=0 missing in {a.other}")
            continue
        ok, text = tensor_check(n, ref[n], other[n], a.dtype)
        zero += text.startswith("zero")
        if not ok:
            failed.append(n)
        print(f"AGREE label={a.label} dtype={a.dtype} tensor={n} ok={int(ok)} {text}")
    print(f"AGREE label={a.label} dtype={a.dtype} tensor=ALL ok={int(not failed)} "
          f"compared={len(names)} zero_in_reference={zero} failed={','.join(failed) or '-'}")
    sys.exit(1 if failed else 0)


def selftest(_a):
    import torch
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 40, generator=g)
    scores = torch.randn(4, 30, generator=g)
    scores[:, 0] = -1e9
    moved = scores.clone()
    moved[:, 0] = -5e8
    cases = [  # (name, ref, other, dtype, expected)
        ("grad.x", x, x.clone(), "f32", True),
        ("grad.x", x, x * 1.01, "f32", False),
        ("grad.x", x, x * 1.01, "bf16", True),
        ("grad.x", x, x + torch.randn(50, 40, generator=g), "bf16", False),
        ("grad.x", torch.zeros(3), torch.zeros(3), "f32", True),
        ("grad.x", torch.zeros(3), torch.full((3,), 1e-3), "bf16", False),
        ("scores", scores, moved, "f32", True),
        ("loss", torch.tensor([2.0]), torch.tensor([2.05]), "bf16", True),
        ("loss", torch.tensor([2.0]), torch.tensor([2.2]), "bf16", False),
        ("grad.x", x, x.clone().index_fill_(0, torch.tensor([3]), float("nan")), "bf16", False),
    ]
    wrong = [(i, text) for i, (n, r, o, dt, want) in enumerate(cases)
             for ok, text in [tensor_check(n, r, o, dt)] if ok != want]
    for i, text in wrong:
        print(f"selftest case {i}: unexpected result: {text}")
    print(f"selftest: {len(cases) - len(wrong)}/{len(cases)} cases as expected")
    sys.exit(1 if wrong else 0)


# --------------------------------------------------------------- summary

def decoder_params(cfg):
    """Parameters of the decoder layers of a Llama config.json."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    kv = cfg.get("num_key_value_heads", heads) * hd
    return layers * (h * heads * hd * 2 + 2 * h * kv + 3 * h * i + 2 * h)


def plan_mb(total):
    """MB of a plan's total as `teacher plan` prints it (`7.5GB`), or None."""
    units = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}
    for u in sorted(units, key=len, reverse=True):
        if total and total.endswith(u):
            try:
                return round(float(total[:-len(u)]) * units[u], 1)
            except ValueError:
                return None
    return None


def kv_line(line):
    return dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)


def summary(a):
    out = {"agreement": [], "timing": [], "plan": {}, "gpu": None, "ratios": [],
           "flops_formula": "train: 4*P*N, infer: 2*P*N; P = decoder-layer parameters, "
                            "N = rows * mean real prompt tokens; peak 790 TFLOP/s (H100 bf16)"}
    configs = {}
    for line in open(a.log):
        line = line.strip()
        if line.startswith("AGREE") and "tensor=ALL" in line:
            out["agreement"].append(kv_line(line))
        elif line.startswith("RESULT"):
            out["timing"].append(kv_line(line))
        elif line.startswith("PLAN"):
            kv = kv_line(line)
            out["plan"].setdefault(kv.pop("shape"), {}).update(kv)
        elif line.startswith("GPU"):
            out["gpu"] = line[4:]
        elif line.startswith("CONFIG"):
            kv = kv_line(line)
            with open(kv["file"]) as f:
                configs[kv["shape"]] = decoder_params(json.load(f))
        elif line.startswith("SKIPPED"):
            out.setdefault("skipped", []).append(line[8:])
    for r in out["timing"]:
        p, shape = configs.get(r.get("shape")), r.get("shape")
        if p is None or "step_ms" not in r:
            continue
        n = int(r["batch"]) * float(r.get("prompt_tokens", r["tokens"]))
        flops = (4 if r["step"] == "teacher" else 2) * p * n
        r["decoder_params"] = p
        rate = flops / (float(r["step_ms"]) / 1e3)
        r["tflops"] = float(f"{rate / 1e12:.4g}")
        r["peak_share"] = float(f"{rate / PEAK_BF16:.4g}")
    for shape in sorted({r.get("shape") for r in out["timing"]} - {None}):
        for step in ("teacher", "infer"):
            def med(impl, key):
                v = sorted(float(r[key]) for r in out["timing"]
                           if r.get("shape") == shape and r["step"] == step
                           and r["impl"] == impl and key in r)
                return v[len(v) // 2] if v else None
            d, t = med("distillrec", "tok_s"), med("pytorch", "tok_s")
            if d and t:
                out["ratios"].append({"shape": shape, "step": step, "distillrec_tok_s": d,
                                      "pytorch_tok_s": t, "speed": round(d / t, 3),
                                      "gpu_mb_distillrec": med("distillrec", "gpu_peak_mb"),
                                      "gpu_mb_pytorch": med("pytorch", "gpu_peak_mb"),
                                      "plan_train_mb": plan_mb(out["plan"].get(shape, {}).get("total"))})
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, a.out)
    for r in out["ratios"]:
        print(f"RATIO shape={r['shape']} step={r['step']} speed={r['speed']} "
              f"(distillrec {r['distillrec_tok_s']:.0f} tok/s, pytorch {r['pytorch_tok_s']:.0f} tok/s)")
    for r in out["timing"]:
        if "peak_share" in r:
            print(f"SHARE shape={r['shape']} step={r['step']} impl={r['impl']} "
                  f"{r['tflops']:.3g} TFLOP/s = {100 * r['peak_share']:.3g}% of the bf16 peak")
    print(f"results: {a.out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tiny")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare")
    c.add_argument("ref")
    c.add_argument("other")
    c.add_argument("--dtype", choices=("f32", "bf16"), required=True)
    c.add_argument("--label", default="-")
    sub.add_parser("selftest")
    s = sub.add_parser("summary")
    s.add_argument("log")
    s.add_argument("out")
    a = ap.parse_args(argv)
    {"tiny": tiny, "compare": compare, "selftest": selftest, "summary": summary}[a.cmd](a)


if __name__ == "__main__":
    main()
