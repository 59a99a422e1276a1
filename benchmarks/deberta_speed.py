"""DeBERTa-v3 training and prediction speed: torchpalm's DeBERTaV2 vs transformers' DebertaV2ForSequenceClassification
at its best, in ONE process (speed_vs_hf.py's method and code, with DeBERTa on both sides).

Same random-init DeBERTa-v3-base configuration on both sides (microsoft/deberta-v3-base's config.json: 12 layers,
H768, 256 position buckets, shared attention keys, c2p + p2c), the same SST-2 sentences tokenised once (BERT's
uncased WordPiece: ids that DeBERTa-v3's 128k table embeds; the vocabulary does not change the work), batch 32,
fused AdamW (weight decay 0.01, constant lr), dropout as in the config, fp32.

Sides:
  torchpalm         DeBERTaV2 on its default path (packed: dense layers on real tokens, attention in length
                    groups; the relative terms over the distances the batch has), batches in random order
  torchpalm_padded  the padded path (`backbone.pack_tokens = False`), the same batches
  hf                DebertaV2ForSequenceClassification, dynamic padding, the same batches
  hf_grouped        the same, batches grouped by length as HF Trainer's `group_by_length` does
Rates are medians over rounds that alternate the sides (A B C D A B C D ...), as in speed_vs_hf.py.

Usage: python benchmarks/deberta_speed.py [--threads 1] [--steps 8] [--predict_steps 8] [--rounds 2]
Results: benchmarks/results/deberta_speed.<device>.json
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from common import minilm_dir, parse_sides, results_header
from speed_vs_hf import (
    MEGABATCH,
    ROOT,
    HFSide,
    collate,
    default_peak_tflops,
    group_by_length,
    load_task,
    measure,
    print_table,
    ratios,
)

# microsoft/deberta-v3-base's config.json as published
DEBERTA_V3_BASE = {
    "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 512, "relative_attention": True, "position_buckets": 256,
    "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7,
    "max_relative_positions": -1, "position_biased_input": False, "num_attention_heads": 12,
    "num_hidden_layers": 12, "type_vocab_size": 0, "vocab_size": 128100,
}
TINY = {**DEBERTA_V3_BASE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "position_buckets": 8}
SIDES = ["torchpalm", "torchpalm_padded", "hf", "hf_grouped"]


class DebertaSide:
    """A torchpalm Trainer on DeBERTaV2 whose steps the benchmark drives batch by batch."""

    def __init__(self, config: dict, args, pack: bool = True):
        import torchpalm as palm

        torch.manual_seed(args.seed)
        backbone = palm.backbone.DeBERTaV2.from_config(config)
        backbone.pack_tokens = pack
        head = palm.head.Classify(2, config["hidden_size"], config["hidden_dropout_prob"])
        self.trainer = palm.Trainer("speed", device=args.device, precision=args.precision)
        self.model = self.trainer.build_forward(backbone, head)
        self.trainer.build_backward(palm.optimizer.Adam(self.model, args.lr), weight_decay=0.01)
        self.loop = self.trainer.loop  # the step Trainer.train runs, without a reader in the way
        self.device = torch.device(args.device)

    def train_step(self, batch: dict) -> None:
        self.loop.train_step("speed", batch["palm"])

    def predict(self, batch: dict) -> torch.Tensor:
        from torchpalm.loop import autocast, to_device

        inputs = {k: v for k, v in batch["palm"].items() if k != "label_ids"}
        with autocast(self.device, self.trainer._precision):
            return self.model(to_device(inputs, self.device))["logits"]

    def parameters_for_flops(self) -> int:
        """Parameters outside the embedding tables (the relative table is projected per layer, not counted)."""
        bb = self.model.backbone
        tables = (bb.word_embeddings, bb.rel_embeddings)
        return sum(p.numel() for p in self.model.parameters()) - sum(t.weight.numel() for t in tables)


class HFDebertaSide(HFSide):
    """DebertaV2ForSequenceClassification (no SDPA path exists for DeBERTa in transformers: its own attention)."""

    def __init__(self, config: dict, args):
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        torch.manual_seed(args.seed)
        self.arch = "deberta-v2"  # HFSide passes token_type_ids (DeBERTa-v3 has no segment table: unused)
        model = DebertaV2ForSequenceClassification(DebertaV2Config(**config, num_labels=2))
        self.model = model.to(args.device).train()
        self.device = torch.device(args.device)
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
        decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, fused=True)
        self.precision = args.precision


def run(args, config: dict, sides: list[str], peak_flops: float) -> dict:
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir())
    n_needed = max(MEGABATCH * args.batch_size, (args.steps + args.warmup) * args.batch_size)
    examples = load_task("sst2", tokenizer, n_needed, args.max_seqlen)
    rng = np.random.default_rng(args.seed)
    chunk = lambda order: [order[i:i + args.batch_size]  # noqa: E731
                           for i in range(0, len(order) - args.batch_size + 1, args.batch_size)]
    orders = {"plain": chunk(rng.permutation(len(examples)).tolist()),
              "grouped": chunk(group_by_length([len(e["ids"]) for e in examples], args.batch_size,
                                                 rng.permutation(len(examples)).tolist()))}
    batches = {k: [collate(examples, idx) for idx in v] for k, v in orders.items()}
    models = {s: (DebertaSide(config, args, pack=s == "torchpalm") if s.startswith("torchpalm")
                  else HFDebertaSide(config, args)) for s in sides}
    ours = next((m for s, m in models.items() if s.startswith("torchpalm")), None)
    flops_params = ours.parameters_for_flops() if ours is not None else 0
    out = {"examples": len(examples), "parameters_for_flops": flops_params}
    # (prediction on the random batches only: HF grouped predicts as HF plain does, on other batches)
    out.update(measure(models, lambda side: batches["grouped" if side == "hf_grouped" else "plain"], args,
                       flops_params, peak_flops, [s for s in ("torchpalm", "torchpalm_padded", "hf") if s in models]))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per side")
    p.add_argument("--predict_steps", type=int, default=8, help="timed prediction batches per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--peak_tflops", type=float, default=0.0)
    p.add_argument("--tiny", action="store_true", help="a 2-layer H32 model: a check of the script, not a measure")
    p.add_argument("--out", help="default benchmarks/results/deberta_speed.<device>.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = parse_sides(p, args.sides, SIDES)
    device = torch.device(args.device)
    peak_flops = 1e12 * (args.peak_tflops or default_peak_tflops(device, torch.get_num_threads()))
    config = TINY if args.tiny else DEBERTA_V3_BASE
    results = {**results_header(args), "peak_tflops": peak_flops / 1e12,
               "model": "tiny DeBERTa-v3 (random)" if args.tiny else "DeBERTa-v3-base config (random init)"}
    res = run(args, config, sides, peak_flops)
    res["train_ratios"] = ratios(res["train"])
    if "hf" in res["predict"]:
        res["predict_ratios"] = {f"{s}_over_hf": v["examples_per_second"] / res["predict"]["hf"]["examples_per_second"]
                                 for s, v in res["predict"].items() if s.startswith("torchpalm")}
    results["sst2"] = res
    print_table("sst2", "train", res["train"], res["train_ratios"])
    if res["predict"]:
        print_table("sst2", "predict", res["predict"], res.get("predict_ratios", {}))
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"deberta_speed.{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
