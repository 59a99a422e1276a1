"""Data-parallel training under torchrun (gloo on CPU): the same unchanged script, run with plain `python` and
as 2 processes with the same global batch and dropout off, logs the same per-step losses (metrics.jsonl,
within 1e-5) and ends with the same weights; prediction gathers every rank's batches back in order.

Each run starts fresh Python processes (about 10-20 s each on 2 cores)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared
from safetensors.torch import load_file

import torchpalm as palm
from torchpalm.distributed import NPROC_ENV, interleave
from torchpalm.fsdp import FSDP_ENV

SCRIPT = Path(__file__).with_name("ddp_script.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def write_data(work: Path) -> None:
    rng = random.Random(0)
    words = "good bad great awful fine terrible nice poor movie film plot acting story".split()
    for name, n, labels in (("train.tsv", 40, 2), ("train2.tsv", 24, 3), ("test.tsv", 13, 2)):
        lines = ["label\ttext_a"] + [f"{rng.randrange(labels)}\t{' '.join(rng.choices(words, k=rng.randint(2, 12)))}"
                                     for _ in range(n)]
        (work / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    tagged = ["text_a\tlabel"]
    for _ in range(32):
        n = rng.randint(1, 12)
        tagged.append("\x02".join(rng.choices(words, k=n)) + "\t" + "\x02".join(rng.choices("OBI", k=n)))
    (work / "tag.tsv").write_text("\n".join(tagged) + "\n", encoding="utf-8")


def run(work: Path, mode: str, launcher: list[str], fsdp: bool = False, backbone: str = "bert",
        balance: str | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", FSDP_ENV: "1" if fsdp else "0", "TORCHPALM_TEST_BACKBONE": backbone}
    if balance is not None:
        env["TORCHPALM_TEST_BALANCE"] = balance
    vocab = str(shared("vocab", "bert-base-uncased-vocab.txt"))
    done = subprocess.run([*launcher, str(SCRIPT), str(work), vocab, mode], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def losses(work: Path) -> list[tuple[str, float]]:
    records = [json.loads(line) for line in open(work / "out" / "metrics.jsonl")]
    return [(r["task"], r["loss"]) for r in records if "loss" in r]


def same_run(one: Path, two: Path, predictions: str = "pred/predictions.json") -> None:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) > 0 and [t for t, _ in a] == [t for t, _ in b]  # same steps, same task draws
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) <= 1e-5
    wa, wb = load_file(one / "out" / "final" / "model.safetensors"), load_file(two / "out" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    single = json.load(open(one / "rank0.json"))["results"]
    rank0, rank1 = (json.load(open(two / f"rank{r}.json")) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert len(rank0["results"]) == len(single) == 13  # the last, partial batch too
    assert rank0["results"] == rank1["results"]  # every rank gets all the results
    assert [r["label"] for r in rank0["results"]] == [r["label"] for r in single]
    for p, q in zip(rank0["results"], single):
        assert max(abs(x - y) for x, y in zip(p["probs"], q["probs"])) <= 1e-5
    written = [json.loads(line) for line in open(two / "out" / predictions)]
    assert [r["index"] for r in written] == list(range(13))
    if (one / "out" / "bundle").is_dir():  # palm.export of the EMA weights, written whole by rank 0
        ba, bb = (load_file(d / "out" / "bundle" / "model.safetensors") for d in (one, two))
        assert ba.keys() == bb.keys() and max((ba[k] - bb[k]).abs().max().item() for k in ba) <= 1e-5
        assert max((ba[k] - wa[k]).abs().max().item() for k in ba) > 0  # EMA weights, not the live ones


def fresh(path: Path) -> Path:
    path.mkdir()
    write_data(path)
    return path


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """The single-task script run once as one process and once as two (shared by the tests below)."""
    base = tmp_path_factory.mktemp("single")
    one, two = fresh(base / "one"), fresh(base / "two")
    run(one, "single", [sys.executable])
    run(two, "single", torchrun())
    return one, two


@pytest.fixture
def works(tmp_path):
    return fresh(tmp_path / "one"), fresh(tmp_path / "two")


def test_two_processes_train_like_one_with_the_same_global_batch(single_runs):
    one, two = single_runs
    same_run(one, two)
    # evaluation during training: the gathered dev predictions give every rank the 1-process scores
    evals = [json.load(open(d / f"rank{r}.json"))["eval"] for d, r in ((one, 0), (two, 0), (two, 1))]
    assert len(evals[0]) == 3 and evals[0] == evals[1] == evals[2]
    assert (two / "out" / "best.cls" / "complete.json").is_file()
    # only rank 0 wrote: one metrics line per step, the periodic checkpoints once
    assert len(losses(two)) == 15 and sorted(p.name for p in (two / "out").glob("ckpt.step*")) == [
        "ckpt.step12", "ckpt.step15", "ckpt.step4", "ckpt.step8"]


@pytest.mark.parametrize("processes", [2, 1])
def test_resume_a_two_process_run(single_runs, tmp_path, processes):
    """From the 2-process run's step-8 checkpoint: with 2 processes again the rest is bit-exact; with 1, equal
    within 1e-5 (the same global batches; only the reduction order of the gradients differs)."""
    _, two = single_runs
    res = fresh(tmp_path / "resumed")
    shutil.copytree(two / "out" / "ckpt.step8", res / "out" / "ckpt.step8")
    shutil.copy(two / "out" / "metrics.jsonl", res / "out" / "metrics.jsonl")
    run(res, "single", torchrun() if processes == 2 else [sys.executable])
    full, resumed = losses(two), losses(res)
    assert len(resumed) == len(full) == 15
    if processes == 2:
        assert resumed == full
    else:
        assert max(abs(x - y) for (_, x), (_, y) in zip(full, resumed)) <= 1e-5
    wa, wb = (load_file(d / "out" / "final" / "model.safetensors") for d in (two, res))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= (0 if processes == 2 else 1e-5)


def test_plain_python_starts_the_processes_itself(single_runs, tmp_path):
    """PALM's `CUDA_VISIBLE_DEVICES=0,1 python run.py`: one process per visible GPU, started by the script itself.
    Without GPUs, TORCHPALM_NPROC forces the count (the test's stand-in for two GPUs)."""
    one, _ = single_runs
    two = fresh(tmp_path / "auto")
    os.environ[NPROC_ENV] = "2"
    try:
        run(two, "single", [sys.executable])
    finally:
        del os.environ[NPROC_ENV]
    same_run(one, two)


def test_multi_head_trainer_under_torchrun_draws_the_same_tasks(works):
    one, two = works
    run(one, "multi", [sys.executable])
    run(two, "multi", torchrun())
    same_run(one, two, "pred/a/predictions.json")
    assert {t for t, _ in losses(two)} == {"a", "b"}
    # joint inference on two processes: task b's results gathered too, one backbone pass per batch
    single, ranks = json.load(open(one / "rank0.json")), [json.load(open(two / f"rank{r}.json")) for r in (0, 1)]
    assert len(single["b"]) == 13 and ranks[0]["b"] == ranks[1]["b"] == single["b"]
    assert single["backbone_passes"] == 4 and [r["backbone_passes"] for r in ranks] == [2, 2]


def test_unseeded_reader_gives_every_rank_rank0s_order(works):
    _, two = works
    run(two, "noseed", torchrun())
    seeds = [json.load(open(two / f"rank{r}.json"))["seed"] for r in (0, 1)]
    assert seeds[0] is not None and seeds[0] == seeds[1]


def test_token_budget_batches_under_torchrun(works, uncased_vocab):
    """Token budgets per process: each step every rank trains its own batch of the shared plan; both ranks run
    the same steps (3 epochs of len(plan) // 2), and their weights stay equal."""
    _, two = works
    run(two, "tokens", torchrun())
    plan = palm.reader.ClassifyReader(uncased_vocab, 32, seed=3, do_lower_case=True)
    plan.load_data(str(two / "train.tsv"), 8, num_epochs=3)
    plan.set_batching(max_tokens=64)
    n_batches = plan.steps_per_epoch  # one process: every batch of the plan is a step
    assert n_batches >= 4
    ranks = [json.load(open(two / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3 * (n_batches // 2) == len(losses(two))
    assert ranks[0]["results"] == ranks[1]["results"] and len(ranks[0]["results"]) == 13
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]


def test_token_averaged_loss_is_the_global_batch_mean(works):
    """A softmax tagger's loss is a mean over words, and the two ranks' halves of a batch hold different numbers
    of words: each rank's mean is weighted by its share of the words, so 2 processes train like 1."""
    one, two = works
    run(one, "tag", [sys.executable])
    run(two, "tag", torchrun())
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 8  # 2 epochs of 32 // 8 batches
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) <= 1e-5
    wa, wb = (load_file(d / "out" / "final" / "model.safetensors") for d in (one, two))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


def test_fsdp_shards_modernbert_layer_by_layer(works):
    """ModernBERT under FSDP2 (each layer one unit; local layers, rotary positions, packed batches): the same
    losses, weights, EMA bundle and gathered predictions as one process."""
    one, two = works
    run(one, "single", [sys.executable], backbone="modernbert")
    run(two, "single", torchrun(), fsdp=True, backbone="modernbert")
    same_run(one, two)
    facts = [json.load(open(two / f"rank{r}.json")) for r in (0, 1)]
    assert facts[0]["sharded_numel"] + facts[1]["sharded_numel"] == facts[0]["numel"] > 0
    state = json.load(open(two / "out" / "final" / "trainer_state.json"))
    assert state["backbone"]["class"] == "ModernBERT"


def test_train_one_step_returns_the_global_batch_loss_for_both_trainers(works):
    """PALM's own loop (`train_one_step`) under torchrun: Trainer and MultiHeadTrainer both return the global
    batch's mean loss, the same number on every rank and the one a single process computes (a tagger whose
    ranks hold different numbers of words, so a rank's own share-weighted loss would differ)."""
    one, two = works
    run(one, "steps", [sys.executable])
    run(two, "steps", torchrun())
    single, rank0, rank1 = (json.load(open(d / f"rank{r}.json")) for d, r in ((one, 0), (two, 0), (two, 1)))
    for kind in ("single", "multi"):
        assert rank0[kind] == rank1[kind]  # every rank returns the same loss
        assert len(rank0[kind]) == len(single[kind]) and [s[0] for s in rank0["multi"]] == [s[0] for s in
                                                                                            single["multi"]]
    assert max(abs(a - b) for a, b in zip(rank0["single"], single["single"])) <= 1e-5
    assert max(abs(a[1] - b[1]) for a, b in zip(rank0["multi"], single["multi"])) <= 1e-5
    assert {s[0] for s in single["multi"]} == {0, 1}  # both tasks stepped

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback(single_runs, tmp_path):
    """`torchrun --nnodes=2` with c10d rendezvous, both "nodes" on 127.0.0.1: the multi-node recipe of the README."""
    one, _ = single_runs
    two = fresh(tmp_path / "nodes")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    vocab = str(shared("vocab", "bert-base-uncased-vocab.txt"))
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=palm-test",
                               str(SCRIPT), str(two), vocab, "single"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(log[-3000:] for log in logs)
    same_run(one, two)


def test_batch_size_must_split_over_the_ranks(monkeypatch, tmp_path, uncased_vocab):
    write_data(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "3")  # what torchrun announces, before any process group exists
    reader = palm.reader.ClassifyReader(uncased_vocab, 32)
    with pytest.raises(ValueError, match=r"batch_size 8 is the global batch .* divisible .* \(3\)"):
        reader.load_data(str(tmp_path / "train.tsv"), 8)
    reader.load_data(str(tmp_path / "train.tsv"), 9)  # a multiple is fine
    predict = palm.reader.ClassifyReader(uncased_vocab, 32, phase="predict")
    predict.load_data(str(tmp_path / "test.tsv"), 8)  # predict batches go whole to one rank
    monkeypatch.setenv("WORLD_SIZE", "1")
    loaded = palm.reader.ClassifyReader(uncased_vocab, 32)
    loaded.load_data(str(tmp_path / "train.tsv"), 8)
    with pytest.raises(ValueError, match=r"train.tsv\): batch_size 8 .* \(3\)"):
        loaded.shard(0, 3)  # the other call order: loaded first, sharded at fit_reader


def test_shards_cover_each_global_batch_once(tmp_path, uncased_vocab):
    write_data(tmp_path)
    seen = []
    for rank in range(2):
        reader = palm.reader.ClassifyReader(uncased_vocab, 32, seed=5)
        reader.load_data(str(tmp_path / "train.tsv"), 8, num_epochs=1)
        reader.shard(rank, 2)
        seen.append([b["token_ids"] for b in reader])
    whole = palm.reader.ClassifyReader(uncased_vocab, 32, seed=5)
    whole.load_data(str(tmp_path / "train.tsv"), 8, num_epochs=1)
    def rows(ids):
        return [tuple(r[r != 0].tolist()) for r in ids]

    batches = list(zip(whole, *seen))
    assert len(batches) == 5
    for full, a, b in batches:
        assert a.shape[0] == b.shape[0] == 4
        assert rows(a) + rows(b) == rows(full["token_ids"])


def test_interleave_restores_round_robin_order():
    assert interleave([[0, 2, 4], [1, 3]]) == [0, 1, 2, 3, 4]
    assert interleave([[0, 3], [1], [2]]) == [0, 1, 2, 3]
    assert interleave([[]]) == []


# ---- FSDP2 (`torchpalm.fsdp`): the same script, TORCHPALM_FSDP=1, sharded instead of replicated ----

@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    two = fresh(tmp_path_factory.mktemp("fsdp") / "two")
    run(two, "single", torchrun(), fsdp=True)
    return two


def test_fsdp_trains_like_one_process(single_runs, fsdp_run):
    """Sharded weights, gradients and Adam moments: the same losses, weights, EMA export and gathered predictions
    as one process (within 1e-5), full tensors in the checkpoints."""
    one, _ = single_runs
    same_run(one, fsdp_run)
    facts = [json.load(open(fsdp_run / f"rank{r}.json")) for r in (0, 1)]
    # each rank holds about half of every parameter (dim 0 split in two), not a replica
    assert all(0 < f["sharded_numel"] <= f["numel"] // 2 + 2000 for f in facts)
    assert facts[0]["sharded_numel"] + facts[1]["sharded_numel"] == facts[0]["numel"]
    assert json.load(open(one / "rank0.json"))["sharded_numel"] == 0  # one process: nothing sharded
    assert sorted(p.name for p in (fsdp_run / "out").glob("ckpt.step*")) == [
        "ckpt.step12", "ckpt.step15", "ckpt.step4", "ckpt.step8"]


@pytest.mark.parametrize("launch", ["fsdp", "ddp", "one"])
def test_resume_an_fsdp_run(fsdp_run, tmp_path, launch):
    """An FSDP checkpoint holds whole tensors in the usual files: resumed under FSDP with the same processes it
    is bit-exact; under DDP or in one process, within 1e-5 (the same batches, another reduction order)."""
    res = fresh(tmp_path / "resumed")
    shutil.copytree(fsdp_run / "out" / "ckpt.step8", res / "out" / "ckpt.step8")
    shutil.copy(fsdp_run / "out" / "metrics.jsonl", res / "out" / "metrics.jsonl")
    run(res, "single", [sys.executable] if launch == "one" else torchrun(), fsdp=launch == "fsdp")
    full, resumed = losses(fsdp_run), losses(res)
    assert len(resumed) == len(full) == 15
    if launch == "fsdp":
        assert resumed == full
    else:
        assert max(abs(x - y) for (_, x), (_, y) in zip(full, resumed)) <= 1e-5
    for name in ("final", "bundle"):
        wa, wb = (load_file(d / "out" / name / "model.safetensors") for d in (fsdp_run, res))
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= (0 if launch == "fsdp" else 1e-5)


def test_resume_a_ddp_run_under_fsdp(single_runs, tmp_path):
    _, two = single_runs
    res = fresh(tmp_path / "resumed")
    shutil.copytree(two / "out" / "ckpt.step8", res / "out" / "ckpt.step8")
    shutil.copy(two / "out" / "metrics.jsonl", res / "out" / "metrics.jsonl")
    run(res, "single", torchrun(), fsdp=True)
    assert max(abs(x - y) for (_, x), (_, y) in zip(losses(two), losses(res))) <= 1e-5


def test_multi_head_trainer_under_fsdp(works):
    """Two heads on one sharded backbone: a step leaves the other head without gradients (FSDP2 skips it on
    every rank alike), the same task draws and losses as one process, joint inference gathered."""
    one, two = works
    run(one, "multi", [sys.executable])
    run(two, "multi", torchrun(), fsdp=True)
    same_run(one, two, "pred/a/predictions.json")
    single, ranks = json.load(open(one / "rank0.json")), [json.load(open(two / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["b"] == ranks[1]["b"] == single["b"] and ranks[0]["sharded_numel"] > 0


@pytest.mark.parametrize("method", ["task_moments", "protected_moments"])
def test_task_moments_under_fsdp_train_like_one_process_and_resume_exactly(works, tmp_path, method):
    """balance='task_moments' / 'protected_moments': each task's Adam state of the sharded backbone is kept per
    task (and protected_moments' projection runs on the shards); two sharded processes train as one process
    does, and a run resumed under FSDP from the step-4 checkpoint (whose optimizer.pt holds every task's full
    moments) continues with the same losses and weights."""
    one, two = works
    run(one, "multi", [sys.executable], balance=method)
    run(two, "multi", torchrun(), fsdp=True, balance=method)
    same_run(one, two, "pred/a/predictions.json")
    saved = torch.load(two / "out" / "ckpt.step4" / "optimizer.pt", weights_only=True)
    assert set(saved["task_states"]) == {"a", "b"}
    res = fresh(tmp_path / "resumed")
    (res / "out").mkdir()
    shutil.copytree(two / "out" / "ckpt.step4", res / "out" / "ckpt.step4")
    shutil.copy(two / "out" / "metrics.jsonl", res / "out" / "metrics.jsonl")
    run(res, "multi", torchrun(), fsdp=True, balance=method)
    assert losses(res) == losses(two)
    wa, wb = (load_file(d / "out" / "final" / "model.safetensors") for d in (two, res))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) == 0


def test_fsdp_shards_deberta_layer_by_layer(works):
    """DeBERTa-v3 under FSDP2 (each layer one unit; the relative embedding table in the root unit): the same
    losses, weights and gathered predictions as one process."""
    one, two = works
    run(one, "single", [sys.executable], backbone="deberta")
    run(two, "single", torchrun(), fsdp=True, backbone="deberta")
    same_run(one, two)
    facts = [json.load(open(two / f"rank{r}.json")) for r in (0, 1)]
    assert facts[0]["sharded_numel"] + facts[1]["sharded_numel"] == facts[0]["numel"] > 0
    state = json.load(open(two / "out" / "final" / "trainer_state.json"))
    assert state["backbone"]["class"] == "DeBERTaV2"
