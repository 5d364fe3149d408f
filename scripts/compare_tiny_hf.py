#!/usr/bin/env python3
"""Check distillrec's Llama (with llama3 RoPE scaling), Mistral (sliding
window), Qwen2 and OPT (pre-norm with project_in/out, and post-norm) against
Hugging Face transformers on tiny random models.

Each model is created by transformers with a fixed seed, saved as a Hugging
Face directory (config.json + model.safetensors + a tokenizer.json taken from
the SmolLM2 GGUF), then `distillrec llm logits` is compared with the
transformers forward pass on the same token ids. One-off check; torch is
never a test dependency.

    /work/torchenv/bin/python scripts/compare_tiny_hf.py --bin target/release/distillrec \
        --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
import transformers as tf

PROMPT = "The quick brown fox jumps over the lazy dog while 3 cats watch quietly from the old wooden fence."


def configs(vocab):
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    yield "llama-gqa-llama3-rope", tf.LlamaConfig(
        **common, intermediate_size=96, num_key_value_heads=2, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        max_position_embeddings=256, tie_word_embeddings=False)
    yield "mistral-sliding-window", tf.MistralConfig(
        **common, intermediate_size=96, num_key_value_heads=2, sliding_window=6,
        max_position_embeddings=256, tie_word_embeddings=False)
    yield "qwen2", tf.Qwen2Config(**common, intermediate_size=96, num_key_value_heads=2,
                                  max_position_embeddings=256, tie_word_embeddings=True)
    yield "opt-prenorm-project", tf.OPTConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
        max_position_embeddings=128, word_embed_proj_dim=32, do_layer_norm_before=True)
    yield "opt-postnorm", tf.OPTConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
        max_position_embeddings=128, word_embed_proj_dim=64, do_layer_norm_before=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--gguf", required=True)
    a = ap.parse_args()
    d, name = os.path.split(os.path.abspath(a.gguf))
    tok = tf.AutoTokenizer.from_pretrained(d, gguf_file=name)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for label, cfg in configs(len(tok)):
            torch.manual_seed(0)
            cfg._attn_implementation = "eager"
            model = tf.AutoModelForCausalLM.from_config(cfg).eval()
            with torch.no_grad():  # larger weights than the init default, so errors show
                for p in model.parameters():
                    p.mul_(4.0) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
            out = os.path.join(tmp, label)
            model.save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
            res = os.path.join(tmp, label + ".json")
            subprocess.run([a.bin, "llm", "logits", "--model", out, "--prompt", PROMPT, "--out", res], check=True)
            with open(res) as f:
                ours = json.load(f)
            with torch.no_grad():
                ref = model(torch.tensor([ours["ids"]])).logits[0, -1].double().numpy()
            got = np.asarray(ours["logits"])
            diff = np.abs(ref - got).max()
            rel = diff / np.abs(ref).max()
            worst = max(worst, rel)
            print(f"{label:28s} tokens {len(ours['ids'])}  max|ref| {np.abs(ref).max():8.3f}  "
                  f"max abs diff {diff:.2e}  rel {rel:.2e}  argmax equal {ref.argmax() == got.argmax()}")
    print(f"RESULT tiny_hf_worst_rel={worst:.2e} pass={worst <= 1e-3}")


if __name__ == "__main__":
    main()
