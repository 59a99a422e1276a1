"""What FSDP saves: the bytes of weights, gradients and Adam moments each process holds, DDP against FSDP2, on the
same model and batches under torchrun, and the losses of the two (equal within float summation order).

    python benchmarks/fsdp_memory.py                       # BERT-base configuration, 2 processes (gloo on CPU)
    python benchmarks/fsdp_memory.py --nproc 4 --layers 24 --hidden 1024 --heads 16   # BERT-large shape
    python benchmarks/fsdp_memory.py --device cuda         # on GPUs (NCCL; one process per GPU)

The parent starts `torchrun` twice (DDP, then TORCHPALM_FSDP=1) on this same file; each rank trains `--steps`
steps of random-initialised BERT on synthetic sentences (random token ids, random lengths, seeded) through the
public Trainer API, then counts the tensors it holds: local shards of parameters and gradients after backward
(measured before the optimizer zeroes them), and the optimizer's state. Writes
benchmarks/results/fsdp_memory.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def worker(args) -> None:
    import numpy as np
    import torch

    import torchpalm as palm

    torch.manual_seed(0)
    config = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
              "intermediate_size": 4 * args.hidden, "vocab_size": 30522, "max_position_embeddings": 512,
              "type_vocab_size": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02}
    rng = np.random.default_rng(1)
    rows = ["label\ttext_a"] + [f"{rng.integers(2)}\t" + " ".join(f"w{int(x)}" for x in rng.integers(0, 50, rng.integers(8, 60)))
                                for _ in range(args.batch * args.steps)]
    data = os.path.join(args.work, "train.tsv")
    if int(os.environ.get("RANK", "0")) == 0:
        with open(data + ".tmp", "w") as f:
            f.write("\n".join(rows) + "\n")
        os.replace(data + ".tmp", data)
    vocab = os.path.join(args.work, "vocab.txt")
    trainer = palm.Trainer("cls", device=args.device, precision="fp32")  # joins the process group
    palm.distributed.barrier()
    reader = palm.reader.ClassifyReader(vocab, 128, seed=1)
    reader.load_data(data, args.batch, num_epochs=1)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    trainer.build_forward(backbone, palm.head.Classify(2, args.hidden, 0.0))
    trainer.build_backward(palm.optimizer.Adam(None, 1e-4), weight_decay=0.01)
    trainer.fit_reader(reader)
    loop = trainer.loop
    grads = {}
    zero_grad = loop.torch_optimizer.zero_grad

    def measure_then_zero(set_to_none=True):  # the gradients exist between backward and this call
        grads.setdefault("bytes", local_bytes(p.grad for p in trainer.model.parameters()))
        zero_grad(set_to_none=set_to_none)

    loop.torch_optimizer.zero_grad = measure_then_zero
    losses = [float(trainer.train_one_step(trainer.get_one_batch())["cls.loss"]) for _ in range(args.steps)]
    opt = sum(local_bytes(v for v in s.values() if isinstance(v, torch.Tensor)) for s in loop.torch_optimizer.state.values())
    record = {"rank": palm.distributed.rank(), "params": local_bytes(trainer.model.parameters()),
              "grads": grads["bytes"], "optimizer": opt, "losses": losses,
              "full_params": sum(p.numel() * p.element_size() for p in trainer.model.parameters())}
    if args.device == "cuda":
        record["peak_cuda"] = torch.cuda.max_memory_allocated()
    with open(os.path.join(args.work, f"{args.mode}.rank{record['rank']}.json"), "w") as f:
        json.dump(record, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join(HERE, "results", "fsdp_memory.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from common import results_header

    from torchpalm.tokenizer import load_vocab  # noqa: F401  (fails early if torchpalm is not installed)

    work = tempfile.mkdtemp(prefix="fsdp_memory_")
    with open(os.path.join(work, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(50)]) + "\n")
    per_mode = {}
    for mode in ("ddp", "fsdp"):
        env = {**os.environ, "TORCHPALM_FSDP": "1" if mode == "fsdp" else "0", "TORCHPALM_CACHE": "0"}
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               os.path.abspath(__file__), "--worker", "--mode", mode, "--work", work]
        cmd += [f"--{k}={getattr(args, k)}" for k in ("layers", "hidden", "heads", "batch", "steps", "device")]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{mode} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        per_mode[mode] = [json.load(open(os.path.join(work, f"{mode}.rank{r}.json"))) for r in range(args.nproc)]
    summary = {}
    for mode, ranks in per_mode.items():
        summary[mode] = {k: max(r[k] for r in ranks) / 2**20 for k in ("params", "grads", "optimizer")}
        summary[mode]["total"] = sum(summary[mode].values())
        if "peak_cuda" in ranks[0]:
            summary[mode]["peak_cuda"] = max(r["peak_cuda"] for r in ranks) / 2**20
    diff = max(abs(a - b) for a, b in zip(per_mode["ddp"][0]["losses"], per_mode["fsdp"][0]["losses"]))
    result = {**results_header(args), "full_params_mib": per_mode["ddp"][0]["full_params"] / 2**20,
              "per_rank_mib": summary, "loss_max_abs_diff": diff,
              "losses": {m: per_mode[m][0]["losses"] for m in per_mode}}
    print(f"model: {result['full_params_mib']:.1f} MiB of fp32 weights; {args.nproc} processes, {args.device}")
    print(f"{'MiB per process':<16}{'weights':>10}{'grads':>10}{'Adam':>10}{'total':>10}")
    for mode, row in summary.items():
        print(f"{mode:<16}" + "".join(f"{row[k]:>10.1f}" for k in ("params", "grads", "optimizer", "total")))
    print(f"FSDP / DDP, weights + gradients + Adam per process: {summary['fsdp']['total'] / summary['ddp']['total']:.3f}")
    print(f"losses, largest difference DDP vs FSDP over {args.steps} steps: {diff:.2e}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
