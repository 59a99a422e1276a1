"""A/B of the [CLS]-only last layer: a Classify head reads only the pooled [CLS] features, so the encoder's last
layer can run its query, attention output and feed-forward on the [CLS] rows alone (keys and values still from
every token). Same random SST-2 batches of 32 (MiniLM, fp32, fused AdamW, dropout 0.1), training steps and then
prediction passes interleaved A B B A ... in one process, so that load on the machine hits both alike; prints the
median times and the paired ratios. "full" is the encoder as before (the backbone not told what the head reads).

    python benchmarks/last_layer_cls.py [--batches 26] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def interleaved(fn, batches: list, warmup: int = 2) -> dict[bool, np.ndarray]:
    """Seconds per call of fn(batch) with the hint on (True) and off (False), alternating which goes first."""
    import torchpalm.loop as loop
    from torchpalm.backbone.bert import BERT

    times: dict[bool, list[float]] = {True: [], False: []}
    for k, batch in enumerate(batches):
        for hint in ((True, False) if k % 2 else (False, True)):
            loop._TAKES_OUTPUTS[BERT] = hint  # False: the backbone is called as before, full encoder
            start = time.perf_counter()
            fn(batch)
            if k >= warmup:
                times[hint].append(time.perf_counter() - start)
    loop._TAKES_OUTPUTS.pop(BERT, None)
    return {h: np.array(t) for h, t in times.items()}


def report(kind: str, times: dict[bool, np.ndarray]) -> dict:
    full, cls = times[False], times[True]
    row = {"pairs": len(full), "median_full_s": float(np.median(full)), "median_cls_only_s": float(np.median(cls)),
           "speedup_of_medians": float(np.median(full) / np.median(cls)),
           "median_paired_ratio": float(np.median(full / cls))}
    print(f"{kind}: {row['pairs']} batch pairs, median full {row['median_full_s']:.3f} s, [CLS]-only last layer "
          f"{row['median_cls_only_s']:.3f} s; speed-up {row['speedup_of_medians']:.3f}x (median of paired ratios "
          f"{row['median_paired_ratio']:.3f}x)")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=26)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the medians as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import speed_vs_hf as bench

    side, batches = bench.minilm_side_and_sst2_batches(args.batches)
    results = {"train": report("training step", interleaved(side.train_step, batches))}
    with torch.no_grad():
        side.model.eval()
        results["predict"] = report("prediction", interleaved(side.predict, batches))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/" + " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
                       "threads": args.threads, **results}, f, indent=1)


if __name__ == "__main__":
    main()
