"""How far under 2% of a step protected_moments' correction can go on this machine: its cost as torchpalm runs it
(eager PyTorch), against the least any kernel can do.

A corrected step needs dot products over the whole backbone (to decide the correction) and then an update of the
weights along the two tasks' first moments; the update cannot share the sweep that decides it. The least a kernel
can add to the step is therefore one more read (the other task's moment) in the optimizer's own sweep, which
computes the dot products on the fly, plus one sweep w += a m_o + b m_t (read three vectors, write one). This script
times, in one process:

  step            a real training step of benchmarks/multitask_speed.py's `multi` side (MiniLM, two SST-2 tasks,
                  batch 32, the default balance="auto"), and the eager correction's cost it measures
  torch_adamw     PyTorch's fused AdamW on the corrected parameters (the step every run does)
  c_adamw         the same AdamW as a hand-written C loop over one flat buffer (kernels/correction_floor.c),
                  checked against torch_adamw's result
  c_adamw_dots    that loop also computing the correction's dot products (reads m_o too)
  c_correct       the correction's sweep
  c_stream        w += a m_o (read two vectors, write one), for the memory bandwidth

and reports the fused floor (c_adamw_dots - c_adamw + c_correct) and the bandwidth floor (five vectors of
traffic at c_stream's rate) as shares of the step. The C parts need a C compiler (`cc`, or $CC).

Usage: python benchmarks/correction_floor.py [--n 320] [--threads 1] [--rounds 7] [--repeats 20]
Results: benchmarks/results/correction_floor.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import multitask_speed
import torch
from common import minilm_dir, results_header

import torchpalm as palm
from torchpalm import balancing

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_kernels(tmp: str) -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("no C compiler (cc, gcc or $CC): only the eager correction and torch's AdamW are timed")
        return None
    out = os.path.join(tmp, "correction_floor.so")
    subprocess.run([cc, "-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC",
                    os.path.join(HERE, "kernels", "correction_floor.c"), "-o", out, "-lm"], check=True)
    lib = ctypes.CDLL(out)
    f, p, n = ctypes.c_float, ctypes.c_void_p, ctypes.c_long
    lib.adamw.argtypes = [p, p, p, p, n] + [f] * 7
    lib.adamw_dots.argtypes = [p, p, p, p, p, n] + [f] * 7 + [ctypes.POINTER(ctypes.c_double)]
    lib.correct.argtypes = [p, p, p, n, f, f]
    return lib


HYPER = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}


def adamw_scalars(step: int) -> list[float]:
    """The C kernels' last seven arguments for AdamW step `step`: lr, beta1, beta2, eps, weight decay,
    1 - beta1^step and sqrt(1 - beta2^step)."""
    b1, b2 = HYPER["betas"]
    return [HYPER["lr"], b1, b2, HYPER["eps"], HYPER["weight_decay"], 1 - b1 ** step, (1 - b2 ** step) ** 0.5]


def check_kernels(lib: ctypes.CDLL, n: int) -> dict[str, torch.Tensor]:
    """Runs AdamW step 10 on random flat buffers of n elements with `adamw_dots` and with torch's fused AdamW, and
    `correct` against torch; raises SystemExit where the C kernels do not compute what they stand for. Returns
    the buffers (w, g, m, v, mo, mt), for the timings."""
    torch.manual_seed(0)
    b = {"w": torch.randn(n) * 0.05, "g": torch.randn(n) * 1e-3, "m": torch.randn(n) * 1e-4,
         "v": torch.rand(n) * 1e-6, "mo": torch.randn(n) * 1e-4, "mt": torch.randn(n) * 1e-4}
    w = torch.nn.Parameter(b["w"].clone())
    w.grad = b["g"]
    adamw = torch.optim.AdamW([w], fused=True, **HYPER)
    adamw.state[w] = {"step": torch.tensor(9.0), "exp_avg": b["m"].clone(), "exp_avg_sq": b["v"].clone()}
    adamw.step()
    expected, new_m = w.detach() - b["w"], adamw.state[w]["exp_avg"]
    out = (ctypes.c_double * 3)()
    start = b["w"].clone()
    plain = {k: b[k].clone() for k in ("w", "g", "m", "v")}  # `adamw`, which must step exactly as `adamw_dots`
    lib.adamw(plain["w"].data_ptr(), plain["g"].data_ptr(), plain["m"].data_ptr(), plain["v"].data_ptr(), n,
              *adamw_scalars(10))
    lib.adamw_dots(b["w"].data_ptr(), b["g"].data_ptr(), b["m"].data_ptr(), b["v"].data_ptr(), b["mo"].data_ptr(),
                   n, *adamw_scalars(10), out)
    update = b["w"] - start
    # the two differ by the rounding of the new weights: a few float32 ulps of the largest weight
    ulps = float((update - expected).abs().max() / (torch.finfo(torch.float32).eps * start.abs().max()))
    dots = [float(torch.dot(x.double(), y.double())) for x, y in ((expected, b["mo"]), (b["mo"], new_m),
                                                                  (new_m, new_m))]
    same = all(torch.equal(plain[k], b[k]) for k in ("w", "m", "v"))
    before = b["w"].clone()
    lib.correct(b["w"].data_ptr(), b["mo"].data_ptr(), b["mt"].data_ptr(), n, 0.5, -0.25)
    corrected = bool(torch.allclose(b["w"], before + 0.5 * b["mo"] - 0.25 * b["mt"], rtol=1e-6, atol=1e-9))
    print(f"C AdamW against torch's fused AdamW: largest difference {ulps:.1f} ulps of the largest weight; dot "
          f"products {[f'{x:.6g}' for x in out]} against {[f'{x:.6g}' for x in dots]}; correction right: {corrected}; adamw as adamw_dots: {same}")
    if not same or ulps > 4 or any(abs(x - y) > 1e-3 * abs(y) for x, y in zip(out, dots)) or not corrected \
            or float((b["m"] - new_m).abs().max()) > 4 * torch.finfo(torch.float32).eps * float(new_m.abs().max()):
        raise SystemExit("the C kernels do not compute what they stand for")
    return b


def step_time(args, tmp: str) -> tuple[float, float]:
    """Seconds per step of multitask_speed's `multi` side, and the eager correction's seconds per step that it
    measures on the trained model."""
    model = minilm_dir()
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    src = os.path.join(multitask_speed.SHARED, "sst2", "train.tsv")
    files = {"a": multitask_speed.write_rows(src, 0, args.n, os.path.join(tmp, "a.tsv")),
             "b": multitask_speed.write_rows(src, args.n, 2 * args.n, os.path.join(tmp, "b.tsv"))}
    seconds, steps = multitask_speed.multi(files, model, config, "auto")
    return seconds / steps, multitask_speed.BALANCE_COST[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=320, help="sentences per task of the timed training run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7, help="rounds of the kernel timings (medians are reported)")
    p.add_argument("--repeats", type=int, default=20, help="calls per kernel per round")
    p.add_argument("--out", default=os.path.join(HERE, "results", "correction_floor.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        step, eager = step_time(args, tmp)
        lib = compile_kernels(tmp)
        with open(os.path.join(minilm_dir(), "config.json")) as f:
            backbone = palm.backbone.BERT.from_config(json.load(f))
        shapes = [q.shape for q in balancing.corrected_params(backbone)]
        n = sum(s.numel() for s in shapes)
        torch.manual_seed(0)
        w, g = torch.randn(n) * 0.05, torch.randn(n) * 1e-3
        m, v = torch.randn(n) * 1e-4, torch.rand(n) * 1e-6
        mo, mt = torch.randn(n) * 1e-4, torch.randn(n) * 1e-4
        # torch's fused AdamW on tensors shaped as the corrected parameters
        params = [torch.nn.Parameter(torch.randn(s) * 0.05) for s in shapes]
        for q in params:
            q.grad = torch.randn_like(q) * 1e-3
        adamw = torch.optim.AdamW(params, fused=True, **HYPER)
        runs = {"torch_adamw": adamw.step}
        if lib is not None:
            buffers = check_kernels(lib, n)
            w, g, m, v, mo, mt = (buffers[k] for k in ("w", "g", "m", "v", "mo", "mt"))
            ptr = lambda t: t.data_ptr()  # noqa: E731
            scalars, out = adamw_scalars(10), (ctypes.c_double * 3)()
            runs["c_adamw"] = lambda: lib.adamw(ptr(w), ptr(g), ptr(m), ptr(v), n, *scalars)
            runs["c_adamw_dots"] = lambda: lib.adamw_dots(ptr(w), ptr(g), ptr(m), ptr(v), ptr(mo), n, *scalars, out)
            runs["c_correct"] = lambda: lib.correct(ptr(w), ptr(mo), ptr(mt), n, 1e-9, -1e-9)
            runs["c_stream"] = lambda: w.add_(mo, alpha=1e-9)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for label, fn in runs.items() if r % 2 == 0 else reversed(runs.items()):
                fn()
                start = time.perf_counter()
                for _ in range(args.repeats):
                    fn()
                times[label].append((time.perf_counter() - start) / args.repeats)
    med = {k: statistics.median(t) for k, t in times.items()}
    result = {**results_header(args), "corrected_parameters": n, "step_seconds": step,
              "eager_correction_seconds": eager, "eager_correction_share": eager / step, "seconds": med}
    print(f"{n} corrected parameters; a training step {step * 1e3:.1f} ms")
    print(f"eager correction (torchpalm now): {eager * 1e3:.2f} ms, {100 * eager / step:.2f}% of the step")
    for k, t in med.items():
        print(f"  {k:13s} {t * 1e3:7.3f} ms  {100 * t / step:5.2f}%")
    if lib is not None:
        fused = med["c_adamw_dots"] - med["c_adamw"] + med["c_correct"]
        bandwidth = 5 * med["c_stream"] / 3
        result.update(fused_floor_seconds=fused, fused_floor_share=fused / step,
                      bandwidth_floor_seconds=bandwidth, bandwidth_floor_share=bandwidth / step,
                      c_adamw_over_torch=med["c_adamw"] / med["torch_adamw"])
        print(f"fused floor (the dot products in the optimizer's sweep, then the correction's sweep): "
              f"{fused * 1e3:.2f} ms, {100 * fused / step:.2f}% of the step")
        print(f"bandwidth floor (5 vectors of traffic at c_stream's rate): {bandwidth * 1e3:.2f} ms, "
              f"{100 * bandwidth / step:.2f}% of the step")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
