#!/usr/bin/env python3
"""RecBole's SASRec on a distillrec prepared dataset, same protocol (benchmark only).

Never a test or CI dependency. Needs `pip install recbole==1.2.1` (and torch).

    scripts/recbole_sasrec.py --data runs/data-ml100k [--seed 42] [--epochs 200]

What is made equal to `distillrec train student --config configs/ml-100k-sasrec.toml`:
- the data: the prepared sequences (already filtered and ordered) are written as
  RecBole atomic files, one interaction per position with the position as its
  timestamp, RecBole's own filters off; RecBole's leave-one-out (`LS:
  valid_and_test`, time order) then gives the same valid and test targets;
- the model sizes: hidden 64, 2 layers, 1 head, feed-forward 64, dropout 0.2,
  the last 50 items, cross-entropy over all items, Adam lr 1e-3, batch 128;
- the protocol: full ranking over every item with the user's whole history
  masked (RecBole's sequential full-sort evaluation masks nothing; this script
  masks the training items and the input sequence, which together are the
  history at validation and at test), HR/NDCG at 10 and 20, early stopping on
  valid NDCG@10 with patience 10, one thread.

Prints one `RESULT impl=recbole ...` line with the best epoch's valid NDCG@10,
the test metrics of that checkpoint, seconds per epoch (training only, and
with validation) and seconds to the best epoch.
"""

import argparse
import csv
import os
import sys
import tempfile
import time


def write_atomic(data_dir, out_dir, name):
    """sequences.csv -> <out_dir>/<name>/<name>.inter; returns {user: [items]}."""
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    seqs = {}
    with open(os.path.join(data_dir, "sequences.csv"), newline="") as f:
        for row in csv.DictReader(f):
            seqs[row["user"]] = row["items"].split()
    with open(os.path.join(out_dir, name, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in seqs.items():
            for t, item in enumerate(items):
                f.write(f"{user}\t{item}\t{t}\n")
    return seqs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="distillrec prepared dataset directory")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--inner", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()

    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    # RecBole 1.2.1 predates NumPy 2: give it the aliases it reads
    for old, new in [("float_", np.float64), ("complex_", np.complex128),
                     ("unicode_", np.str_), ("bool8", np.bool_)]:
        if not hasattr(np, old):
            setattr(np, old, new)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    # Importing RecBole's sequential models runs sine.py, which switches on
    # autograd anomaly detection for the whole process: every op then
    # records a Python traceback, and a training step takes several times
    # longer. It is a debugging aid, not part of the method.
    torch.autograd.set_detect_anomaly(False)

    data_dir = os.path.abspath(a.data)
    work = tempfile.mkdtemp(prefix="recbole-")
    # RecBole writes its TensorBoard logs under the working directory
    os.chdir(work)
    name = "distillrec"
    seqs = write_atomic(data_dir, work, name)
    config = Config(
        model="SASRec",
        dataset=name,
        config_dict={
            "data_path": work,
            "checkpoint_dir": os.path.join(work, "saved"),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "user_inter_num_interval": "[0,inf)",
            "item_inter_num_interval": "[0,inf)",
            "MAX_ITEM_LIST_LENGTH": a.max_len,
            "eval_args": {
                "split": {"LS": "valid_and_test"},
                "order": "TO",
                "group_by": "user",
                "mode": "full",
            },
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "hidden_size": a.hidden,
            "inner_size": a.inner,
            "n_layers": a.layers,
            "n_heads": a.heads,
            "hidden_dropout_prob": a.dropout,
            "attn_dropout_prob": a.dropout,
            "learning_rate": a.lr,
            "train_batch_size": a.batch,
            "eval_batch_size": 256,
            "epochs": a.epochs,
            "stopping_step": a.patience,
            "metrics": ["Hit", "NDCG"],
            "topk": [10, 20],
            "valid_metric": "NDCG@10",
            "seed": a.seed,
            "reproducibility": True,
            "worker": 0,
            "show_progress": False,
            "device": "cpu",
            "use_gpu": False,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    # The whole history of a user at evaluation: the training items (all but
    # the last two) plus the input sequence (which at test time ends with the
    # validation item).
    item_field = dataset.iid_field
    train_items = {}
    for user, items in seqs.items():
        uid = dataset.token2id(dataset.uid_field, user)
        train_items[int(uid)] = torch.tensor(
            [int(dataset.token2id(item_field, i)) for i in items[:-2]], dtype=torch.long
        )

    class MaskedSASRec(SASRec):
        def full_sort_predict(self, interaction):
            scores = super().full_sort_predict(interaction)
            seq = interaction[self.ITEM_SEQ]
            scores = scores.scatter(1, seq, float("-inf"))
            for r, uid in enumerate(interaction[self.USER_ID].tolist()):
                hist = train_items.get(uid)
                if hist is not None and len(hist):
                    scores[r, hist] = float("-inf")
            scores[:, 0] = float("-inf")
            return scores

    init_seed(config["seed"], config["reproducibility"])
    model = MaskedSASRec(config, train_data.dataset)
    trainer = Trainer(config, model)
    t0 = time.perf_counter()
    marks = []
    best_state = {}

    # the best epoch's weights are kept in memory (RecBole's own checkpoint
    # is a pickle, which this script does not load)
    def on_epoch(epoch_idx, valid_score):
        if not marks or valid_score > max(m[1] for m in marks):
            best_state["w"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        marks.append((epoch_idx, valid_score, time.perf_counter() - t0))

    best_valid, _ = trainer.fit(train_data, valid_data, saved=False, show_progress=False,
                                callback_fn=on_epoch)
    total = time.perf_counter() - t0
    if "w" in best_state:
        model.load_state_dict(best_state["w"])
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    best = max(marks, key=lambda m: m[1]) if marks else (0, best_valid, total)
    epochs = len(marks)
    print(
        "RESULT impl=recbole model=sasrec seed={} epochs={} best_epoch={} "
        "valid_ndcg@10={:.4f} test_hr@10={:.4f} test_ndcg@10={:.4f} test_hr@20={:.4f} "
        "test_ndcg@20={:.4f} secs_per_epoch={:.2f} secs_to_best={:.1f} total_secs={:.1f}".format(
            a.seed, epochs, best[0] + 1, best_valid, test["hit@10"], test["ndcg@10"],
            test["hit@20"], test["ndcg@20"], total / max(epochs, 1), best[2], total,
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
