"""The reference a user would otherwise write around a distillrec SASRec
checkpoint: PyTorch plus the standard library's threaded HTTP server, one
forward pass per request, no batching. Same endpoint and answer shape as
`distillrec serve` (POST /recommend with {"history": [...], "k": 10,
"exclude_history": true}), for scripts/bench_serve_compare.sh.

    python scripts/serve_torch.py --checkpoint run/checkpoints/best.safetensors \
        [--data <prepared dir>] [--addr 127.0.0.1:8081] [--threads 2]

The forward pass follows crates/distillrec-models/src/sasrec.rs: scaled item
embedding + position, padding zeroed; per block Q = LN(x),
x = LN(Q + MHA(Q, x, x)), x = (x + FFN(x)) * pad; a final LN; scores are the
last position against the item table. Benchmark-only.
"""
import argparse
import csv
import json
import math
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

LN_EPS = 1e-8


def load(checkpoint, data):
    manifest = json.load(open(os.path.splitext(checkpoint)[0] + ".json"))
    spec = manifest["spec"]
    if spec["kind"] != "sasrec":
        sys.exit(f"error: {checkpoint}: only sasrec checkpoints are served here, not {spec['kind']}")
    w = load_file(os.path.join(os.path.dirname(checkpoint), manifest["weights"]))
    data = data or manifest["dataset"]["dir"]
    with open(os.path.join(data, "items.csv"), newline="") as f:
        items = [(r["raw_id"], r["title"]) for r in csv.DictReader(f)]
    return spec, w, items, manifest


class Model:
    def __init__(self, spec, w):
        self.d, self.h, self.l = spec["hidden"], spec["heads"], spec["max_len"]
        self.layers = spec["layers"]
        self.w = w

    def ln(self, x, name):
        return F.layer_norm(x, (self.d,), self.w[name + ".weight"], self.w[name + ".bias"], LN_EPS)

    def lin(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def attention(self, q_in, kv, valid, name):
        b, l, d = kv.shape
        dh = d // self.h
        split = lambda t: t.view(b, l, self.h, dh).transpose(1, 2)
        q, k, v = (split(self.lin(t, f"{name}.{p}")) for t, p in ((q_in, "q"), (kv, "k"), (kv, "v")))
        causal = torch.ones(l, l, dtype=torch.bool).tril()
        allowed = (causal & valid[None, :]) | torch.eye(l, dtype=torch.bool)
        mask = torch.where(allowed, 0.0, -1e9)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + mask, dim=-1)
        return self.lin((att @ v).transpose(1, 2).reshape(b, l, d), f"{name}.o")

    @torch.inference_mode()
    def scores(self, history):
        ids = history[-self.l:]
        seq = torch.tensor([[0] * (self.l - len(ids)) + ids])
        valid = seq != 0
        pad = valid.unsqueeze(-1).float()
        table = self.w["item_emb"]
        x = (table[seq] * math.sqrt(self.d) + self.w["pos_emb"]) * pad
        for i in range(self.layers):
            n = f"blocks.{i}"
            q = self.ln(x, f"{n}.ln_attn")
            x = self.ln(q + self.attention(q, x, valid[0], f"{n}.attn"), f"{n}.ln_ff")
            f = self.lin(torch.relu(self.lin(x, f"{n}.ff1")), f"{n}.ff2")
            x = (x + f) * pad
        rep = self.ln(x[:, -1], "ln_final")
        return (rep @ table.T)[0]


def make_handler(model, items, identity):
    by_raw = {raw: i + 1 for i, (raw, _) in enumerate(items)}
    by_title = {t.lower(): i + 1 for i, (_, t) in enumerate(items)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            # headers and body go out in two writes: without TCP_NODELAY,
            # Nagle's algorithm and delayed ACKs add ~40 ms per answer
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):
            pass

        def reply(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            if self.path != "/recommend":
                return self.reply(404, {"error": "no such endpoint"})
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                k = int(req.get("k", 10))
                hist = []
                for e in req["history"]:
                    e = str(e).strip()
                    hist.append(by_raw.get(e) or by_title[e.lower()])
                if not hist or not 1 <= k <= 1000:
                    raise ValueError("empty history or k out of range")
            except (ValueError, KeyError, TypeError) as e:
                return self.reply(400, {"error": f"bad request: {e}"})
            s = model.scores(hist).clone()
            s[0] = -math.inf
            if req.get("exclude_history", True):
                s[hist] = -math.inf
            top = torch.topk(s, min(k, int(torch.isfinite(s).sum())))
            out = [
                {"id": items[i - 1][0], "title": items[i - 1][1], "score": float(v)}
                for v, i in zip(top.values.tolist(), top.indices.tolist())
            ]
            self.reply(200, {"items": out, "model": identity})

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data")
    ap.add_argument("--addr", default="127.0.0.1:8081")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec, w, items, manifest = load(a.checkpoint, a.data)
    identity = {"checkpoint_sha256": manifest["weights_sha256"], "kind": spec["kind"]}
    host, port = a.addr.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), make_handler(Model(spec, w), items, identity))
    print(f"listening on http://{host}:{srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
