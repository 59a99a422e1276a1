"""Every GPU measurement of the speed issue in one run of a few minutes (`speed_vs_hf.py` under fixed settings).

1. MiniLM (pretrained), batch 32 of SST-2 and MRPC sentences: torchpalm (packed), torchpalm padded, HF plain and HF
   grouped by length; training and prediction.
2. The BERT-base configuration (random init), the same.
3. Throughput mode: torchpalm on token-budget batches (`--token_budget`, default 16,384 real tokens a step) for both
   models, for MFU on real tokens.
4. The ModernBERT-base configuration (random init, benchmarks/modernbert_base.json) against HF's
   ModernBertForSequenceClassification (SDPA, padded; plain and grouped by length), batch 32; and on token-budget
   batches.
5. DeBERTa-v3-base (random init): torchpalm's DeBERTaV2, packed and padded, vs DebertaV2ForSequenceClassification
   plain and grouped by length (`deberta_speed.py`).
(`--compile` adds torchpalm under torch.compile to 1 and 2.)

bf16 autocast by default (`--precision fp32` for fp32). All results go to one JSON file,
benchmarks/results/gpu_speed.<device>.json (and each run's own file next to it).

`--device cpu --smoke` runs the same script with tiny sizes (a 2-layer BERT in place of both BERT models, a 3-layer
ModernBERT for ModernBERT-base, a few steps): a correctness check of the script where no GPU is at hand, not a
measurement. `--runs` picks some of the runs by name.

Usage: python benchmarks/gpu_speed.py [--device cuda] [--steps 60] [--token_budget 16384] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from deberta_speed import main as deberta_speed
from speed_vs_hf import ROOT
from speed_vs_hf import main as speed_vs_hf

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu",
             "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
             "layer_norm_eps": 1e-12}
TINY = {**BERT_BASE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
MODERNBERT_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "modernbert_base.json")
TINY_MODERNBERT = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 48,
                   "local_attention": 8}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--steps", type=int, default=60, help="timed steps per side, task and model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--token_budget", type=int, default=16384)
    p.add_argument("--tasks", default="sst2,mrpc")
    p.add_argument("--compile", action="store_true", help="also measure torchpalm under torch.compile")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="default: speed_vs_hf's per-device default")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for checking the script on CPU")
    p.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    p.add_argument("--out", help="default benchmarks/results/gpu_speed.<device>.json")
    args = p.parse_args(argv)

    device = args.device.split(":")[0]
    out_dir = tempfile.mkdtemp(prefix="gpu_speed_smoke_") if args.smoke else os.path.join(ROOT, "benchmarks", "results")
    config_dir = tempfile.mkdtemp(prefix="gpu_speed_")
    big = TINY if args.smoke else BERT_BASE
    with open(os.path.join(config_dir, "bert_base.json"), "w") as f:
        json.dump(big, f)
    with open(MODERNBERT_BASE) as f:
        modernbert = json.load(f)
    with open(os.path.join(config_dir, "modernbert_base.json"), "w") as f:
        json.dump({**modernbert, **TINY_MODERNBERT} if args.smoke else modernbert, f)
    modernbert = ["--arch", "modernbert", "--config", os.path.join(config_dir, "modernbert_base.json")]
    common = ["--device", args.device, "--precision", args.precision, "--tasks", args.tasks,
              "--steps", str(args.steps), "--predict_steps", str(args.steps), "--rounds", str(args.rounds)]
    if args.peak_tflops:
        common += ["--peak_tflops", str(args.peak_tflops)]
    if args.smoke:
        common = ["--device", args.device, "--precision", args.precision, "--tasks", "sst2", "--steps", "2",
                  "--predict_steps", "2", "--rounds", "2", "--warmup", "1", "--batch_size", "4", "--threads", "1"]
    budget = str(64 if args.smoke else args.token_budget)
    minilm = ["--config", os.path.join(config_dir, "bert_base.json")] if args.smoke else []  # smoke: tiny twice
    compile_flag = ["--compile"] if args.compile else []
    runs = {
        "minilm_batch32": minilm + compile_flag,
        "bert_base_batch32": ["--config", os.path.join(config_dir, "bert_base.json")] + compile_flag,
        "minilm_token_budget": minilm + ["--sides", "torchpalm", "--token_budget", budget, "--predict_steps", "0"],
        "bert_base_token_budget": ["--config", os.path.join(config_dir, "bert_base.json"), "--sides", "torchpalm",
                                   "--token_budget", budget, "--predict_steps", "0"],
        "modernbert_base_batch32": modernbert + compile_flag,
        "modernbert_base_token_budget": modernbert + ["--sides", "torchpalm", "--token_budget", budget,
                                                      "--predict_steps", "0"],
    }
    if args.runs:
        unknown = set(args.runs.split(",")) - set(runs) - {"deberta_v3_base_batch32"}
        if unknown:
            p.error(f"--runs: unknown {sorted(unknown)}; choose from {sorted([*runs, 'deberta_v3_base_batch32'])}")
        runs = {name: extra for name, extra in runs.items() if name in args.runs.split(",")}
    results = {}
    for name, extra in runs.items():
        print(f"\n===== {name} =====", flush=True)
        results[name] = speed_vs_hf(common + extra + ["--out", os.path.join(out_dir, f"gpu_speed.{name}.{device}"
                                                                                       f".json")])
    # DeBERTa-v3-base (random init) against DebertaV2ForSequenceClassification, SST-2 batches of 32
    if not args.runs or "deberta_v3_base_batch32" in args.runs.split(","):
        print("\n===== deberta_v3_base_batch32 =====", flush=True)
        deberta = ["--device", args.device, "--precision", args.precision, "--rounds", str(args.rounds)]
        # (smoke: 2 rounds of the 2 steps; more rounds than steps would time empty rounds)
        deberta += (["--tiny", "--steps", "2", "--predict_steps", "2", "--warmup", "1", "--batch_size", "4",
                     "--threads", "1", "--rounds", "2"] if args.smoke
                    else ["--steps", str(args.steps), "--predict_steps", str(args.steps)])
        deberta += ["--peak_tflops", str(args.peak_tflops)] if args.peak_tflops else []
        results["deberta_v3_base_batch32"] = deberta_speed(
            deberta + ["--out", os.path.join(out_dir, f"gpu_speed.deberta_v3_base_batch32.{device}.json")])
    out = args.out or os.path.join(out_dir, f"gpu_speed.{device}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
