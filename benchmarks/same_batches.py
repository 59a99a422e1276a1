"""Per-real-token cost of torchpalm's ModernBERT against HF's ModernBertForSequenceClassification on the SAME batches,
in one process, the sides alternating batch by batch (speed_vs_hf.py compares each side on its own batching:
ours on random batches, HF grouped on length-sorted ones, so a short run's ratio also carries which batches each
side happened to draw).

Both sides run on (a) batches grouped by length as HF Trainer's `group_by_length` makes them (few padded tokens:
torchpalm packs them anyway) and (b) random batches (a third of the tokens real); the real tokens/s of each pair
show whether torchpalm does less work per real token than HF (a) and what packing saves over padding (b).
Random-init config (`--config`, default benchmarks/modernbert_base.json), fp32, 1 thread by default.

    python benchmarks/same_batches.py [--mode predict|train] [--batches 6] [--layers N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(HERE, "modernbert_base.json"))
    p.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0: the config's)")
    p.add_argument("--mode", default="predict", choices=["predict", "train"])
    p.add_argument("--batches", type=int, default=6, help="timed batches of each kind (after one warm-up)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import speed_vs_hf as bench
    from common import minilm_dir
    from transformers import BertTokenizerFast

    with open(args.config) as f:
        config = json.load(f)
    if args.layers:
        config["num_hidden_layers"] = args.layers
    side_args = argparse.Namespace(device="cpu", precision="fp32", lr=2e-5, seed=1, batch_size=32,
                                   arch="modernbert")
    examples = bench.load_task("sst2", BertTokenizerFast.from_pretrained(minilm_dir()), 1600, 128)
    lengths = [len(e["ids"]) for e in examples]
    grouped = bench.group_by_length(lengths, 32, np.random.default_rng(1).permutation(len(examples)).tolist())
    plain = np.random.default_rng(2).permutation(len(examples)).tolist()
    kinds = {name: [bench.collate(examples, order[i:i + 32]) for i in range(0, len(order), 32)]
             for name, order in (("grouped", grouped), ("random", plain))}
    sides = {"torchpalm": bench.TorchpalmSide(config, None, side_args), "hf": bench.HFSide(config, None, side_args)}
    step = {s: (m.train_step if args.mode == "train" else m.predict) for s, m in sides.items()}
    if args.mode == "predict":
        for m in sides.values():
            m.model.eval()
    timed = {(kind, s): [0, 0.0] for kind in kinds for s in sides}
    with torch.inference_mode() if args.mode == "predict" else torch.enable_grad():
        for i in range(args.batches + 1):
            for kind, batches in kinds.items():
                batch = batches[(7 * i) % len(batches)]  # spread over the megabatch's long and short batches
                for s in (sides if i % 2 else list(sides)[::-1]):
                    start = time.perf_counter()
                    step[s](batch)
                    if i:  # the first round warms up
                        timed[kind, s][0] += batch["real_tokens"]
                        timed[kind, s][1] += time.perf_counter() - start
    out = {"mode": args.mode, "layers": config["num_hidden_layers"], "batches": args.batches, "threads": args.threads}
    for kind in kinds:
        rates = {s: timed[kind, s][0] / timed[kind, s][1] for s in sides}
        out[kind] = {**rates, "torchpalm_over_hf": rates["torchpalm"] / rates["hf"]}
        print(f"{args.mode}, {kind} batches: torchpalm {rates['torchpalm']:.1f} real tok/s, hf {rates['hf']:.1f}; "
              f"ratio {rates['torchpalm'] / rates['hf']:.2f}x")
    return out


if __name__ == "__main__":
    main()
