"""benchmarks/random_bert.py (the random Chinese BERT of the MSRA-NER tagging regime) and the `--model_dir` check of
benchmarks/common.py: the folder it writes is reproducible and every side of conll_vs_hf.py loads the same
encoder from it (torchpalm's BERT through load_pretrain, HF's BertModel)."""

import argparse
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared

import torchpalm as palm
from torchpalm.trainer import load_pretrained_backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import checkpoint_dir  # noqa: E402
from random_bert import write_random_bert  # noqa: E402

transformers = pytest.importorskip("transformers")
TINY = {"layers": 2, "hidden": 32, "heads": 2, "intermediate": 37, "max_positions": 64}


def zh_vocab() -> str:
    return shared("vocab", "bert-base-chinese-vocab.txt")


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = write_random_bert(zh_vocab(), str(tmp_path / "a"), seed=0, **TINY)
    assert write_random_bert(zh_vocab(), str(tmp_path / "b"), seed=0, **TINY) == a
    assert write_random_bert(zh_vocab(), str(tmp_path / "c"), seed=1, **TINY) != a
    assert (tmp_path / "a" / "vocab.txt").read_bytes() == Path(zh_vocab()).read_bytes()


def test_torchpalm_and_hf_load_the_same_encoder(tmp_path):
    """Both sides' encoders from the folder give equal outputs on Chinese text tokenised by its vocabulary."""
    import json

    write_random_bert(zh_vocab(), str(tmp_path), seed=3, **TINY)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == 21128 and config["num_hidden_layers"] == 2
    tok = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    enc = tok(["中国人民银行在北京", "上海"], padding=True, return_tensors="pt")
    assert tok.unk_token_id not in enc["input_ids"]
    hf = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    ours = palm.backbone.BERT.from_config(config, phase="predict")
    load_pretrained_backbone(ours, str(tmp_path))
    with torch.no_grad():
        expected = hf(**enc).last_hidden_state
        positions = torch.arange(enc["input_ids"].shape[1]).expand_as(enc["input_ids"])
        got = ours({"token_ids": enc["input_ids"], "position_ids": positions, "input_mask": enc["attention_mask"],
                    "segment_ids": enc["token_type_ids"]})["encoder_outputs"]
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_model_dir_check_names_the_missing_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    parser = argparse.ArgumentParser()
    with pytest.raises(SystemExit):
        checkpoint_dir(parser, str(tmp_path))
    write_random_bert(zh_vocab(), str(tmp_path), seed=0, **TINY)
    assert checkpoint_dir(parser, str(tmp_path)) == str(tmp_path)
