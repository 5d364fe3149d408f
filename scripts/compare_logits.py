#!/usr/bin/env python3
"""Compare SmolLM2's last-position logits: distillrec vs Hugging Face transformers.

Both read the same GGUF file (transformers dequantizes it to f32 at load).
distillrec's logits come from `distillrec llm logits --out <json>` (token ids
included); transformers runs on exactly those ids, so the tokenizers are
compared separately.

Usage (torch/transformers live in a throwaway venv, never a test dependency):
    /work/torchenv/bin/python scripts/compare_logits.py \
        --bin target/release/distillrec --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "The quick brown fox jumps over the lazy dog. In 1492, Columbus sailed the ocean blue and"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--chat", action="store_true", help="render with the chat template first")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.json")
        cmd = [a.bin, "llm", "logits", "--model", a.gguf, "--prompt", a.prompt, "--out", out]
        if a.chat:
            cmd.append("--chat")
        subprocess.run(cmd, check=True)
        with open(out) as f:
            ours = json.load(f)
    ids = ours["ids"]
    ours_logits = np.asarray(ours["logits"], dtype=np.float64)

    d, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    text = a.prompt
    if a.chat:
        text = tok.apply_chat_template([{"role": "user", "content": a.prompt}], tokenize=False, add_generation_prompt=True)
    hf_ids = tok(text, add_special_tokens=True)["input_ids"]
    print(f"tokens: distillrec {len(ids)}, transformers {len(hf_ids)}, identical: {hf_ids == ids}")
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].double().numpy()

    diff = np.abs(ref - ours_logits)
    max_abs = diff.max()
    rel = max_abs / np.abs(ref).max()
    elem_rel = (diff / np.maximum(np.abs(ref), 1e-6)).max()
    print(f"vocab {ref.shape[0]}  max|ref| {np.abs(ref).max():.4f}")
    print(f"max abs diff {max_abs:.3e}  max abs diff / max|ref| {rel:.3e}  max elementwise rel {elem_rel:.3e}")
    print(f"argmax: distillrec {int(ours_logits.argmax())}  transformers {int(ref.argmax())}")
    print(f"RESULT logits_max_abs={max_abs:.3e} logits_rel={rel:.3e} pass={rel <= 1e-3}")


if __name__ == "__main__":
    main()
