"""A/B of the packed path's attention on CPU: sequences cut into length groups (`MAX_GROUPS` = 4, the default)
against one group padded to the batch's longest sequence (= 1, the cost attention had before the groups), on
the same random SST-2 batches of 32 (MiniLM, fp32, fused AdamW, dropout 0.1), steps interleaved A B B A ... in
one process so that load on the machine hits both alike; prints median step times and the paired ratio.

    python benchmarks/attention_groups.py [--batches 26] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=26)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import speed_vs_hf as bench

    import torchpalm.backbone.packing as packing

    side, batches = bench.minilm_side_and_sst2_batches(args.batches)
    times: dict[int, list[float]] = {1: [], packing.MAX_GROUPS: []}
    groups = list(times)
    for k, batch in enumerate(batches):
        for g in (groups if k % 2 else groups[::-1]):
            packing.MAX_GROUPS = g
            start = time.perf_counter()
            side.train_step(batch)
            if k >= 2:  # warm-up
                times[g].append(time.perf_counter() - start)
    one, grouped = (np.array(times[g]) for g in groups)
    real = sum(b["real_tokens"] for b in batches) / sum(b["padded_tokens"] for b in batches)
    print(f"{len(one)} batch pairs (real tokens {real:.1%} of the padded batches): median step, one group "
          f"{np.median(one):.3f} s, {groups[1]} groups {np.median(grouped):.3f} s; speed-up "
          f"{np.median(one) / np.median(grouped):.3f}x (median of paired ratios {np.median(one / grouped):.3f}x)")


if __name__ == "__main__":
    main()
