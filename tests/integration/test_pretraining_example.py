"""examples/pretraining/run.py end to end on a tiny budget: corpus from ../shared/data, MLM, then both fine-tuning
arms scored on dev and test, and the results file a user reads."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT, shared


def load_run():
    spec = importlib.util.spec_from_file_location("pretraining_run_under_test",
                                                  ROOT / "examples" / "pretraining" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_task_adaptive_pretraining_then_both_arms(tmp_path):
    test_file = shared("chnsenticorp", "test.tsv")
    shared("msra_ner", "full_bio", "MSRA.zip")
    small = tmp_path / "test32.tsv"
    small.write_text("".join(test_file.read_text(encoding="utf-8").splitlines(keepends=True)[:33]), encoding="utf-8")
    run = load_run()
    out = tmp_path / "out"
    results = run.main(["--sources", "chnsenticorp_train", "--corpus_lines", "200", "--heldout_lines", "32",
                        "--mlm_steps", "3", "--mlm_batch_size", "16", "--mlm_max_seqlen", "64", "--print_steps", "1",
                        "--hidden_size", "64", "--num_heads", "2", "--intermediate_size", "128", "--num_layers", "1",
                        "--train_examples", "64", "--epochs", "1", "--max_seqlen", "64",
                        "--dev_file", str(small), "--test_file", str(small), "--save_path", str(out)])
    corpus = (out / "pretrain_corpus.tsv").read_text(encoding="utf-8").splitlines()
    assert corpus[0] == "text_a" and len(corpus) == 201
    assert results["pretrain"]["corpus"]["chnsenticorp_train"] == 9600
    assert set(results["pretrain"]["corpus"]) >= {"chnsenticorp_train", "corpus_lines"}
    assert "msra_ner_train" not in results["pretrain"]["corpus"]
    assert (out / "mlm" / "ckpt.final" / "model.safetensors").is_file()
    for split in ("dev", "test"):
        assert set(results[f"{split}_accuracy"]) == {"pretrained", "scratch"}
        assert all(0.0 <= a <= 1.0 for a in results[f"{split}_accuracy"].values())
    saved = json.loads((out / "pretraining_results.json").read_text(encoding="utf-8"))
    assert saved["test_accuracy"] == results["test_accuracy"]
    # continuing that run to 5 steps in all: resumes at step 4 from the checkpoint, same corpus and reader position
    resumed = run.main(["--sources", "chnsenticorp_train", "--corpus_lines", "200", "--heldout_lines", "32",
                        "--mlm_steps", "5", "--mlm_batch_size", "16", "--mlm_max_seqlen", "64", "--print_steps", "1",
                        "--hidden_size", "64", "--num_heads", "2", "--intermediate_size", "128", "--num_layers", "1",
                        "--stages", "pretrain", "--mlm_resume", str(out / "mlm" / "ckpt.final"),
                        "--save_path", str(tmp_path / "out2")])
    state = json.loads((tmp_path / "out2" / "mlm" / "ckpt.final" / "trainer_state.json").read_text())
    assert state["step"] == 5 and resumed["pretrain"]["mlm_steps"] == 5
    # stage 2 alone, one arm: the pretrained run from that checkpoint
    one = run.main(["--stages", "finetune", "--arms", "pretrained", "--mlm_checkpoint", str(out / "mlm" / "ckpt.final"),
                    "--hidden_size", "64", "--num_heads", "2", "--intermediate_size", "128", "--num_layers", "1",
                    "--train_examples", "64", "--epochs", "1", "--max_seqlen", "64", "--dev_file", "",
                    "--test_file", str(small), "--save_path", str(tmp_path / "out3")])
    assert set(one["accuracy_by_arm"]) == {"pretrained"} and set(one["accuracy_by_arm"]["pretrained"]) == {"test"}
    assert one["accuracy_by_arm"]["pretrained"]["test"] == results["test_accuracy"]["pretrained"]
    # stage 2 over two seeds, both arms: per-seed results, each arm's mean and spread, the paired differences
    seeds = run.main(["--stages", "finetune", "--mlm_checkpoint", str(out / "mlm" / "ckpt.final"),
                      "--hidden_size", "64", "--num_heads", "2", "--intermediate_size", "128", "--num_layers", "1",
                      "--train_examples", "64", "--epochs", "1", "--max_seqlen", "64", "--dev_file", "",
                      "--test_file", str(small), "--finetune_seeds", "1,2", "--save_path", str(tmp_path / "out4")])
    by_seed, summary = seeds["accuracy_by_seed"], seeds["summary"]["test"]
    assert by_seed[1]["pretrained"]["test"] == results["test_accuracy"]["pretrained"]  # seed 1 = the run above
    assert by_seed[1]["scratch"]["test"] == results["test_accuracy"]["scratch"]
    for arm in ("pretrained", "scratch"):
        values = [by_seed[s][arm]["test"] for s in (1, 2)]
        assert summary[arm]["values"] == values and summary[arm]["mean"] == pytest.approx(sum(values) / 2)
        assert summary[arm]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert summary["difference_points"]["values"] == pytest.approx(
        [100 * (by_seed[s]["pretrained"]["test"] - by_seed[s]["scratch"]["test"]) for s in (1, 2)])
    with pytest.raises(SystemExit):
        run.main(["--sources", "no_such_source", "--save_path", str(tmp_path / "bad")])
