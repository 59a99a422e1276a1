"""MatchReader and the Match head (spec §5.3, §8.2): pair encoding against transformers' BertTokenizer on real
MRPC rows, PALM's truncation rule, pairwise batches, optional predict columns, losses and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared

import torchpalm as palm
from torchpalm.reader import DataError, MatchReader
from torchpalm.reader.base import read_tsv


def write(tmp_path, text: str, name: str = "data.tsv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


class FakeBackbone:
    def __init__(self, pairwise: bool = False):
        names = ["token_ids", "position_ids", "segment_ids", "input_mask", "task_ids"]
        self.inputs_attr = {n: None for n in names}
        if pairwise:
            self.inputs_attr.update({f"{n}_neg": None for n in names})
        self.is_pairwise = pairwise


def all_rows(reader) -> list[np.ndarray]:
    """Every example's unpadded token ids, in file order (predict reader)."""
    out = []
    for batch in reader:
        for ids, mask in zip(batch["token_ids"], batch["input_mask"]):
            out.append(ids[mask.bool()].numpy())
    return out


def palm_truncate(a: list, b: list, max_tokens: int) -> tuple[list, list]:
    """PALM's loop, verbatim in spirit: drop the last token of the longer sequence (b when equal)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


@pytest.fixture(scope="module")
def mrpc_rows():
    return [row for _, row in read_tsv(shared("mrpc", "train.tsv"), required=("text_a", "text_b", "label"))][:300]


def test_pair_encoding_matches_transformers_on_mrpc(tmp_path, uncased_vocab, mrpc_rows):
    from transformers import BertTokenizer

    hf = BertTokenizer(uncased_vocab, do_lower_case=True)
    reader = MatchReader(uncased_vocab, 128, do_lower_case=True, phase="predict")
    reader.load_data(str(shared("mrpc", "train.tsv")), 64)
    reader.register_with(FakeBackbone())
    batch_iter = iter(reader)
    compared = 0
    batch = next(batch_iter)
    for i, row in enumerate(mrpc_rows):
        if i and i % 64 == 0:
            batch = next(batch_iter)
        enc = hf(row["text_a"], row["text_b"], truncation="longest_first", max_length=128)
        n = int(batch["input_mask"][i % 64].sum())
        if len(hf(row["text_a"], row["text_b"])["input_ids"]) > 128:
            continue  # rows that need truncation are checked against PALM's rule below
        assert batch["token_ids"][i % 64, :n].tolist() == enc["input_ids"], i
        assert batch["segment_ids"][i % 64, :n].tolist() == enc["token_type_ids"], i
        assert batch["position_ids"][i % 64, :n].tolist() == list(range(n))
        compared += 1
    assert compared > 250


@pytest.mark.parametrize("max_len", [20, 21, 33])
def test_truncation_follows_palm_rule(uncased_vocab, mrpc_rows, max_len):
    reader = MatchReader(uncased_vocab, max_len, do_lower_case=True, phase="predict")
    reader.load_data(str(shared("mrpc", "train.tsv")), 50)
    reader.register_with(FakeBackbone())
    got = all_rows(reader)[: len(mrpc_rows)]
    tok = reader.tokenizer
    for row, ids in zip(mrpc_rows, got):
        a, b = palm_truncate(tok.encode(row["text_a"]), tok.encode(row["text_b"]), max_len - 3)
        assert ids.tolist() == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
        assert len(ids) <= max_len
    # an equal-length tie removes from b: a=4 pieces, b=4 pieces, room for 6 -> a keeps 3, b keeps 3; room 5 -> 3, 2
    assert palm_truncate([1] * 4, [2] * 4, 5) == ([1] * 3, [2] * 2)


def test_mrpc_glue_header_and_labels(uncased_vocab):
    reader = MatchReader(uncased_vocab, 128, seed=1, do_lower_case=True)
    reader.load_data(str(shared("mrpc", "train.tsv")), 32, num_epochs=1)
    reader.register_with(FakeBackbone())
    assert reader.num_examples == 3668
    batch = next(iter(reader))
    assert set(batch) == {"token_ids", "position_ids", "segment_ids", "input_mask", "task_ids", "label_ids"}
    assert batch["label_ids"].dtype == torch.int64 and set(batch["label_ids"].tolist()) <= {0, 1}
    assert reader.steps_per_epoch == 3668 // 32


def test_pairwise_batches_tokenise_a_once(tmp_path, uncased_vocab):
    text = ("text_a\ttext_b\ttext_b_neg\n"
            "what is a cat\ta cat is an animal\tthe stock market fell sharply today\n"
            "where is paris\tparis is in france\tbananas\n"
            "who wrote hamlet\tshakespeare wrote hamlet in about 1600\tno\n")
    reader = MatchReader(uncased_vocab, 64, seed=0, do_lower_case=True, learning_strategy="pairwise")
    calls = []
    original = reader.tokenizer.encode_batch
    reader.tokenizer.encode_batch = lambda texts: calls.append(list(texts)) or original(texts)
    reader.load_data(write(tmp_path, text), 3, num_epochs=1, shuffle_train=False)
    assert sum(len(c) for c in calls) == 9  # a, b and b_neg once each per row (PALM encoded a twice)
    reader.register_with(FakeBackbone(pairwise=True))
    (batch,) = list(reader)
    tok = reader.tokenizer
    for i, line in enumerate(text.splitlines()[1:]):
        a, b, neg = line.split("\t")
        pos_ids = [tok.cls_id, *tok.encode(a), tok.sep_id, *tok.encode(b), tok.sep_id]
        neg_ids = [tok.cls_id, *tok.encode(a), tok.sep_id, *tok.encode(neg), tok.sep_id]
        assert batch["token_ids"][i, : len(pos_ids)].tolist() == pos_ids
        assert batch["token_ids_neg"][i, : len(neg_ids)].tolist() == neg_ids
        assert batch["input_mask_neg"][i].sum() == len(neg_ids)
        assert batch["segment_ids_neg"][i, : len(neg_ids)].tolist() == [0] * (len(tok.encode(a)) + 2) + [1] * (
            len(tok.encode(neg)) + 1)
    # each side is padded to its own longest pair
    assert batch["token_ids"].shape[1] == int(batch["input_mask"].sum(1).max())
    assert batch["token_ids_neg"].shape[1] == int(batch["input_mask_neg"].sum(1).max())
    assert batch["token_ids"].shape[1] != batch["token_ids_neg"].shape[1]
    assert "label_ids" not in batch and torch.equal(batch["task_ids_neg"], torch.zeros_like(batch["token_ids_neg"]))


def test_predict_files_need_no_label_or_negative(tmp_path, uncased_vocab):
    path = write(tmp_path, "text_a\ttext_b\nhello\tworld\nhow are you\tfine\n")
    for strategy in ("pointwise", "pairwise"):
        reader = MatchReader(uncased_vocab, 32, learning_strategy=strategy, phase="predict")
        reader.load_data(path, 8)
        reader.register_with(FakeBackbone())
        (batch,) = list(reader)
        assert set(batch) == {"token_ids", "position_ids", "segment_ids", "input_mask", "task_ids"}
        assert batch["token_ids"].shape[0] == 2
    # a pairwise training file also works for pairwise predict (text_b_neg ignored)
    train_file = write(tmp_path, "text_a\ttext_b\ttext_b_neg\nq\tpos\tneg\n", "pw.tsv")
    reader = MatchReader(uncased_vocab, 32, learning_strategy="pairwise", phase="predict")
    reader.load_data(train_file, 8)
    reader.register_with(FakeBackbone())
    assert "token_ids_neg" not in next(iter(reader))


def test_bad_input_names_file_and_line(tmp_path, uncased_vocab):
    reader = MatchReader(uncased_vocab, 32)
    with pytest.raises(DataError, match=r"bad.tsv:3: column 'label' must be an integer, got 'yes'"):
        reader.load_data(write(tmp_path, "text_a\ttext_b\tlabel\na\tb\t1\nc\td\tyes\n", "bad.tsv"), 2)
    with pytest.raises(DataError, match=r"nob.tsv:1: .*lacks the required column\(s\) \['text_b'\]"):
        reader.load_data(write(tmp_path, "text_a\tlabel\na\t1\n", "nob.tsv"), 2)
    pairwise = MatchReader(uncased_vocab, 32, learning_strategy="pairwise")
    with pytest.raises(DataError, match=r"\['text_b_neg'\]"):
        pairwise.load_data(write(tmp_path, "text_a\ttext_b\na\tb\n", "noneg.tsv"), 2)
    with pytest.raises(DataError, match=r"short.tsv:2: expected 3 tab-separated fields"):
        reader.load_data(write(tmp_path, "text_a\ttext_b\tlabel\na\t1\n", "short.tsv"), 2)
    with pytest.raises(ValueError, match="learning_strategy"):
        MatchReader(uncased_vocab, 32, learning_strategy="listwise")


def test_label_range_checked_by_head(tmp_path, uncased_vocab, tiny_config):
    reader = MatchReader(uncased_vocab, 32)
    reader.load_data(write(tmp_path, "text_a\ttext_b\tlabel\na\tb\t0\nc\td\t3\n", "range.tsv"), 2)
    backbone = palm.backbone.BERT.from_config(tiny_config)
    reader.register_with(backbone)
    trainer = palm.Trainer("m", device="cpu")
    trainer.build_forward(backbone, palm.head.Match(2, 32))
    with pytest.raises(DataError, match=r"range.tsv:3: label 3 is out of range for 2 classes"):
        trainer.fit_reader(reader)


def test_pointwise_head_outputs_and_loss():
    torch.manual_seed(0)
    head = palm.head.Match(3, 16, dropout_prob=0.5)
    emb = torch.randn(5, 16)
    labels = torch.tensor([0, 2, 1, 1, 0])
    head.eval()
    out = head({"sentence_pair_embedding": emb}, {"label_ids": labels})
    logits = emb @ head.classifier.weight.T + head.classifier.bias
    torch.testing.assert_close(out["logits"], logits)
    torch.testing.assert_close(out["probs"], logits.softmax(-1))
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, labels))
    head.train()  # dropout is applied in train (spec §8.2)
    a = head({"sentence_pair_embedding": emb}, {})["logits"]
    assert not torch.allclose(a, head({"sentence_pair_embedding": emb}, {})["logits"])


def test_pairwise_head_hinge_loss_and_shared_scorer():
    torch.manual_seed(0)
    head = palm.head.Match(2, 16, learning_strategy="pairwise", margin=0.5)
    head.eval()
    pos, neg = torch.randn(6, 16), torch.randn(6, 16)
    out = head({"sentence_pair_embedding": pos, "sentence_pair_embedding_neg": neg}, {})
    w, b = head.classifier.weight, head.classifier.bias
    s_pos, s_neg = torch.sigmoid(pos @ w.T + b), torch.sigmoid(neg @ w.T + b)
    assert out["probs"].shape == (6, 1)
    torch.testing.assert_close(out["probs"], s_pos)
    torch.testing.assert_close(out["loss"], torch.clamp(0.5 - s_pos + s_neg, min=0).mean())
    # margin satisfied (s_pos - s_neg > 0.5) -> zero loss; equal scores -> loss = margin
    u = torch.randn(1, 16)
    with torch.no_grad():
        head.classifier.weight.copy_(u)
        head.classifier.bias.zero_()
    sep = head({"sentence_pair_embedding": 10 * u, "sentence_pair_embedding_neg": -10 * u}, {})
    assert sep["loss"].item() == 0.0
    same = head({"sentence_pair_embedding": pos, "sentence_pair_embedding_neg": pos}, {})
    assert abs(same["loss"].item() - 0.5) < 1e-6


def test_pairwise_needs_pairwise_backbone(tmp_path, uncased_vocab, tiny_config):
    head = palm.head.Match(2, 32, learning_strategy="pairwise")
    with pytest.raises(ValueError, match="is_pairwise=True"):
        head({"sentence_pair_embedding": torch.randn(2, 32)}, {})
    plain = palm.backbone.BERT.from_config(tiny_config)
    with pytest.raises(ValueError, match="sentence_pair_embedding_neg"):
        palm.Trainer("pw", device="cpu").build_forward(plain, head)
    reader = MatchReader(uncased_vocab, 32, learning_strategy="pairwise")
    reader.load_data(write(tmp_path, "text_a\ttext_b\ttext_b_neg\na\tb\tc\n"), 1)
    reader.register_with(plain)
    with pytest.raises(ValueError, match="is_pairwise=True"):
        head.check_reader(reader)
    pointwise_reader = MatchReader(uncased_vocab, 32)
    with pytest.raises(ValueError, match="pairwise but the reader is pointwise"):
        head.check_reader(pointwise_reader)
    # predict heads need no negative branch
    pred = palm.head.Match(2, 32, learning_strategy="pairwise", phase="predict")
    assert set(pred({"sentence_pair_embedding": torch.randn(2, 32)}, {})) == {"probs"}


# ------------------------------------------------------------------------------ data as users have it


def test_glue_style_named_columns_with_label_names_and_predicted_names(tmp_path, uncased_vocab):
    import json

    from torchpalm.trainer import finish_prediction

    # MRPC's own header (#1 String / #2 String / Quality), with label names instead of 0/1
    text = ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            "paraphrase\t1\t2\tthe cat sat\ta cat was sitting\n"
            "different\t3\t4\tit rains\tstocks fell\n")
    path = write(tmp_path, text)
    r = MatchReader(uncased_vocab, 32, label_map={"different": 0, "paraphrase": 1}, do_lower_case=True)
    r.load_data(path, 2, num_epochs=1, shuffle_train=False)
    assert next(iter(r))["label_ids"].tolist() == [1, 0]
    bad = write(tmp_path, text.replace("different\t3", "unrelated\t3"), "bad.tsv")
    with pytest.raises(DataError, match=r"bad.tsv:3: label 'unrelated' is not in the label map .*'different', "
                                        r"'paraphrase'"):
        r.load_data(bad, 2)
    pred = MatchReader(uncased_vocab, 32, phase="predict", label_map={"different": 0, "paraphrase": 1})
    pred.load_data(bad, 2)  # an unknown gold label is not an error in predict
    assert pred.gold_labels() == [1, -1]
    head = palm.head.Match(2, 8, phase="predict")
    head.batch_postprocess({"logits": np.array([[0.0, 1.0], [1.0, 0.0]]), "probs": np.array([[0.3, 0.7]] * 2)})
    out = finish_prediction(pred, head, str(tmp_path / "pred"))
    assert [(p["label"], p["label_name"]) for p in out] == [(1, "paraphrase"), (0, "different")]
    lines = [json.loads(line) for line in open(tmp_path / "pred" / "predictions.json")]
    assert [p["label_name"] for p in lines] == ["paraphrase", "different"]


def test_match_csv_jsonl_and_headerless(tmp_path, uncased_vocab):
    csv_path = write(tmp_path, 'text_a,text_b,label\n"a, b",c,yes\nd,"e ""f""",no\n', "d.csv")
    jsonl_path = write(tmp_path, '{"text_a": "a, b", "text_b": "c", "label": "yes"}\n'
                                 '{"question1": "d", "question2": "e \\"f\\"", "is_duplicate": "no"}\n', "d.jsonl")
    headerless = write(tmp_path, 'a, b\tc\tyes\nd\te "f"\tno\n', "d.tsv")
    got = []
    for path, columns in ((csv_path, None), (jsonl_path, None), (headerless, ["text_a", "text_b", "label"])):
        r = MatchReader(uncased_vocab, 32, label_map=["no", "yes"])
        r.load_data(path, 2, num_epochs=1, shuffle_train=False, columns=columns)
        batch = next(iter(r))
        got.append((batch["label_ids"].tolist(), batch["token_ids"].tolist()))
    assert got[0] == got[1] == got[2] and got[0][0] == [1, 0]
    with pytest.raises(DataError, match=r"d.csv:1: header .* lacks the required column\(s\) \['text_b_neg'\]"):
        MatchReader(uncased_vocab, 32, learning_strategy="pairwise").load_data(csv_path, 2)
