"""Tests for torchpalm.metrics against seqeval, scikit-learn and hand-computed values."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from torchpalm.metrics import (
    accuracy,
    chunk_f1,
    cmrc_em_f1,
    cmrc_exact_match,
    cmrc_f1,
    get_entities,
    infer_scheme,
    load_squad_articles,
    mixed_segmentation,
    normalize_answer,
    palm_classification_metrics,
    palm_token_f1,
    precision_recall_f1,
    remove_punctuation,
    squad_em_f1,
    squad_exact_match,
    squad_f1,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TYPES = ["PER", "LOC", "ORG", "MISC"]
SCHEME_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "BIOES": "BIES", "BMES": "BMES", "BILOU": "BILU"}


def data_file(*parts: str) -> Path:
    """Return a shared data file, skipping the test if it is missing (failing on CI)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing test data {path}")
        pytest.skip(f"missing test data {path}")
    return path


# ----------------------------------------------------------------------------- classification


def test_accuracy_and_errors():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError, match="length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="length"):
        precision_recall_f1([1], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        palm_classification_metrics([], [])


def test_precision_recall_f1_hand_cases():
    # binary: tp=2 (idx 0, 3), fp=2 (idx 2, 5), fn=1 (idx 1)
    res = precision_recall_f1([1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 0])
    assert res == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7})
    # pos_label switches the positive class: class 0 has tp=1, fp=1, fn=2
    res = precision_recall_f1([1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 0], pos_label=0)
    assert res == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4})
    # no positive prediction: zero division gives 0
    assert precision_recall_f1([0, 0], [1, 0]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}

    # multiclass: a -> (P .5, R 1, F 2/3); b -> (1, .5, 2/3); c -> (0, 0, 0)
    preds, labels = ["a", "b", "c", "a"], ["a", "b", "b", "c"]
    assert precision_recall_f1(preds, labels, average="macro") == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 4 / 9}
    )
    assert precision_recall_f1(preds, labels, average="micro") == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    )
    # a class seen only in the predictions still takes part in the macro average
    assert precision_recall_f1([0, 2], [0, 1], average="macro")["f1"] == pytest.approx(1 / 3)

    with pytest.raises(ValueError, match="binary"):
        precision_recall_f1(preds, labels)
    with pytest.raises(ValueError, match="pos_label"):
        precision_recall_f1(["x", "y"], ["y", "x"])
    with pytest.raises(ValueError, match="average"):
        precision_recall_f1(preds, labels, average="weighted")


def test_precision_recall_f1_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(30):
        n_classes = 2 if trial < 10 else int(rng.integers(3, 6))
        labels = rng.integers(0, n_classes, size=int(rng.integers(1, 40))).tolist()
        preds = rng.integers(0, n_classes, size=len(labels)).tolist()
        averages = (
            ["binary", "macro", "micro"]
            if trial < 10 and len(set(labels + preds)) == 2
            else ["macro", "micro"]
        )
        for average in averages:
            ours = precision_recall_f1(preds, labels, average=average)
            p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, average=average, zero_division=0)
            assert ours == pytest.approx({"precision": p, "recall": r, "f1": f}, abs=1e-12), (average, trial)
        assert accuracy(preds, labels) == pytest.approx(skm.accuracy_score(labels, preds))


def test_palm_classification_metrics_hand_example():
    # strings compared: TP idx 0, 3; FP idx 2; FN idx 1; pred '2' only hurts accuracy
    res = palm_classification_metrics([1, 0, 1, 1, 0, 2], ["1", "1", "0", "1", "0", "0"])
    assert res["accuracy"] == pytest.approx(0.5)
    assert res["precision"] == pytest.approx(2 / 3)
    assert res["recall"] == pytest.approx(2 / 3)
    assert res["f1"] == pytest.approx(2 / 3)
    zero = palm_classification_metrics(["0", "0"], ["1", "0"])
    assert zero == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0}


# ----------------------------------------------------------------------------- chunk F1


def random_tag_seqs(rng: np.random.Generator, scheme: str, n: int = 300) -> list[list[str]]:
    """Random, often malformed tag sequences (I- after O, type switches, stray E-)."""
    prefixes = SCHEME_PREFIXES[scheme]
    seqs = []
    for _ in range(n):
        seq = []
        for _ in range(int(rng.integers(0, 16))):
            if rng.random() < 0.35:
                seq.append("O")
            else:
                seq.append(f"{rng.choice(list(prefixes))}-{rng.choice(TYPES)}")
        seqs.append(seq)
    return seqs


def corrupt(rng: np.random.Generator, seqs: list[list[str]], scheme: str, rate: float) -> list[list[str]]:
    """Replace each tag with a random one (possibly 'O') with probability ``rate``."""
    tags = ["O"] + [f"{p}-{t}" for p in SCHEME_PREFIXES[scheme] for t in TYPES]
    return [[str(rng.choice(tags)) if rng.random() < rate else tag for tag in seq] for seq in seqs]


def assert_same_as_seqeval(y_true: list[list[str]], y_pred: list[list[str]], scheme: str) -> dict:
    seqeval = pytest.importorskip("seqeval.metrics")
    ours = chunk_f1(y_true, y_pred, scheme=scheme)
    assert ours["f1"] == pytest.approx(seqeval.f1_score(y_true, y_pred), abs=1e-12)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(y_true, y_pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(seqeval.recall_score(y_true, y_pred), abs=1e-12)
    report = seqeval.classification_report(y_true, y_pred, output_dict=True)
    types = {k for k in report if not k.endswith(" avg")}
    assert set(ours["per_type"]) == types
    for name in types:
        got, want = ours["per_type"][name], report[name]
        assert got["support"] == want["support"]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(
            [want["precision"], want["recall"], want["f1-score"]], abs=1e-12
        )
    return ours


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("scheme", ["IOB2", "IOB1", "BIOES", "IOBES"])
def test_chunk_f1_matches_seqeval_on_random_sequences(scheme):
    sequence_labeling = pytest.importorskip("seqeval.metrics.sequence_labeling")
    key = "BIOES" if scheme == "IOBES" else scheme
    rng = np.random.default_rng(1234)
    y_true = random_tag_seqs(rng, key)
    y_pred = corrupt(rng, y_true, key, rate=0.3)
    for seq in y_true + y_pred:
        assert get_entities(seq, scheme) == sequence_labeling.get_entities(seq)
    ours = assert_same_as_seqeval(y_true, y_pred, scheme)
    assert 0.0 < ours["f1"] < 1.0


def as_seqeval_iobes(seqs: list[list[str]]) -> list[list[str]]:
    """BMES written as seqeval's IOBES (M- is I-): the independent reference for BMES."""
    return [["I" + t[1:] if t.startswith("M") else t for t in seq] for seq in seqs]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("scheme, reference", [("IOB2", "IOB2"), ("IOB1", "IOB1"), ("IOBES", "IOBES"),
                                               ("BMES", "IOBES"), ("BILOU", "BILOU")])
def test_strict_mode_and_bmes_match_seqeval_on_random_sequences(scheme, reference):
    seqeval = pytest.importorskip("seqeval.metrics")
    schemes = pytest.importorskip("seqeval.scheme")
    key = "BIOES" if scheme == "IOBES" else scheme
    rng = np.random.default_rng(99)
    y_true = random_tag_seqs(rng, key)
    y_pred = corrupt(rng, y_true, key, rate=0.3)
    ref_true, ref_pred = (as_seqeval_iobes(y_true), as_seqeval_iobes(y_pred)) if scheme == "BMES" else (y_true, y_pred)
    ref_scheme = getattr(schemes, reference)
    for seq, ref in zip(y_true + y_pred, ref_true + ref_pred, strict=True):
        want = [(e.tag, e.start, e.end - 1) for e in schemes.Tokens(ref, ref_scheme).entities]
        assert get_entities(seq, scheme, mode="strict") == want, seq
    ours = chunk_f1(y_true, y_pred, scheme=scheme, mode="strict")
    kw = {"mode": "strict", "scheme": ref_scheme}
    assert ours["f1"] == pytest.approx(seqeval.f1_score(ref_true, ref_pred, **kw), abs=1e-12)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(ref_true, ref_pred, **kw), abs=1e-12)
    assert ours["recall"] == pytest.approx(seqeval.recall_score(ref_true, ref_pred, **kw), abs=1e-12)
    report = seqeval.classification_report(ref_true, ref_pred, output_dict=True, **kw)
    for name in {k for k in report if not k.endswith(" avg")}:
        assert ours["per_type"][name]["support"] == report[name]["support"]
        assert ours["per_type"][name]["f1"] == pytest.approx(report[name]["f1-score"], abs=1e-12)
    assert 0.0 < ours["f1"] < 1.0
    # strict differs from the default on these malformed sequences (else the test would prove little)
    if scheme != "BILOU":
        assert ours["f1"] != chunk_f1(y_true, y_pred, scheme=scheme)["f1"]


@pytest.mark.filterwarnings("ignore")
def test_bmes_default_mode_matches_seqeval_on_iobes():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(5)
    y_true = random_tag_seqs(rng, "BMES")
    y_pred = corrupt(rng, y_true, "BMES", rate=0.3)
    ref_true, ref_pred = as_seqeval_iobes(y_true), as_seqeval_iobes(y_pred)
    ours = chunk_f1(y_true, y_pred, scheme="BMES")
    assert ours["f1"] == pytest.approx(seqeval.f1_score(ref_true, ref_pred), abs=1e-12)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(ref_true, ref_pred), abs=1e-12)


def test_bmes_and_strict_hand_cases():
    seq = ["B-LOC", "M-LOC", "E-LOC", "S-PER", "O", "M-ORG", "E-ORG"]
    assert get_entities(seq, "BMES") == [("LOC", 0, 2), ("PER", 3, 3), ("ORG", 5, 6)]
    assert get_entities(seq, "BMES", mode="strict") == [("LOC", 0, 2), ("PER", 3, 3)]  # M- cannot open a chunk
    assert get_entities(["B-PER", "I-PER", "O", "I-LOC"], mode="strict") == [("PER", 0, 1)]
    assert get_entities(["B-X", "M-X"], "BMES", mode="strict") == []  # never ended
    with pytest.raises(ValueError, match=r"tag 'M-LOC' is not valid in the IOB2 scheme"):
        chunk_f1([["M-LOC"]], [["O"]])
    with pytest.raises(ValueError, match="mode must be"):
        chunk_f1([["O"]], [["O"]], mode="lenient")
    assert infer_scheme(["O", "B-A", "M-A", "E-A"]) == "BMES" and infer_scheme(["O", "B-A", "I-A"]) == "IOB2"
    assert infer_scheme(["U-A", "O"]) == "BILOU" and infer_scheme(["S-A", "B-A", "E-A"]) == "IOBES"


def test_get_entities_hand_cases():
    # IOB1 style: I- opens a chunk after O, B- splits two adjacent chunks, a type change splits
    seq = ["I-PER", "I-PER", "B-PER", "I-PER", "O", "I-LOC", "I-ORG"]
    assert get_entities(seq, "IOB1") == [("PER", 0, 1), ("PER", 2, 3), ("LOC", 5, 5), ("ORG", 6, 6)]
    # BIOES: E- right after S- opens a new chunk
    seq = ["B-PER", "E-PER", "S-LOC", "E-LOC", "O", "I-ORG", "E-ORG"]
    assert get_entities(seq, "BIOES") == [("PER", 0, 1), ("LOC", 2, 2), ("LOC", 3, 3), ("ORG", 5, 6)]
    assert get_entities([], "IOB2") == []
    with pytest.raises(ValueError, match="not valid"):
        get_entities(["S-PER"], "IOB2")
    with pytest.raises(ValueError, match="not valid"):
        get_entities(["X"], "IOB2")
    with pytest.raises(ValueError, match="scheme"):
        get_entities(["O"], "IOE2")
    with pytest.raises(ValueError, match="sentence 0"):
        chunk_f1([["O", "B-PER"]], [["O"]])


def read_conll_tags(path: Path) -> list[list[str]]:
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if current:
                sentences.append(current)
            current = []
            continue
        current.append(line.split()[-1])
    if current:
        sentences.append(current)
    return sentences


def iob2_to_bioes(seq: list[str]) -> list[str]:
    out = []
    for i, tag in enumerate(seq):
        nxt = seq[i + 1] if i + 1 < len(seq) else "O"
        continues = nxt == f"I-{tag[2:]}"
        if tag.startswith("B-"):
            out.append(tag if continues else f"S-{tag[2:]}")
        elif tag.startswith("I-"):
            out.append(tag if continues else f"E-{tag[2:]}")
        else:
            out.append(tag)
    return out


@pytest.mark.filterwarnings("ignore")
def test_chunk_f1_on_conll2003_test_gold():
    gold = read_conll_tags(data_file("conll2003", "test.txt"))
    assert len(gold) == 3453
    perfect = chunk_f1(gold, gold)
    # the well-known CoNLL-2003 test entity counts
    assert {t: v["support"] for t, v in perfect["per_type"].items()} == {
        "LOC": 1668,
        "MISC": 702,
        "ORG": 1661,
        "PER": 1617,
    }
    assert perfect["f1"] == 1.0

    rng = np.random.default_rng(2003)
    for scheme, seqs in (("IOB2", gold), ("IOB1", gold), ("BIOES", [iob2_to_bioes(s) for s in gold])):
        pred = corrupt(rng, seqs, scheme, rate=0.08)
        ours = assert_same_as_seqeval(seqs, pred, scheme)
        assert 0.3 < ours["f1"] < 0.99


def test_palm_token_f1():
    # sentence 1: prediction longer -> pred[1:4] = [1, 2, 9] vs [1, 2, 3]: 2/3 right
    # sentence 2: prediction shorter -> gold truncated to [4]: 1/1 right
    assert palm_token_f1([[1, 2, 3], [4, 5]], [[0, 1, 2, 9, 7], [4]]) == pytest.approx(0.75)
    assert palm_token_f1([[6, 6, 1]], [[6, 6, 1]]) == 1.0
    assert palm_token_f1([[]], [[]]) == 0.0
    with pytest.raises(ValueError):
        palm_token_f1([[1]], [])


# ----------------------------------------------------------------------------- SQuAD


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Cat, sat on a   mat!") == "cat sat on mat"
    assert normalize_answer("theatre An") == "theatre"  # articles only as whole words
    assert squad_exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert squad_exact_match("Eiffel", ["Paris", "Eiffel Tower"]) == 0.0
    # [big, red, dog] vs [red, dog, barked]: 2 common -> P = R = 2/3
    assert squad_f1("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    # Counter overlap: repeated tokens match once -> P = 1/3, R = 1, F1 = 0.5
    assert squad_f1("dog dog dog", "dog") == pytest.approx(0.5)
    assert squad_f1("red dog", ["cat", "red dog"]) == 1.0
    # both sides normalise to nothing: EM 1, F1 0 in v1.1 but 1 in v2.0
    assert squad_exact_match("", "the") == 1.0
    assert squad_f1("", "the") == 0.0
    assert squad_f1("", "the", version="2.0") == 1.0
    assert squad_f1("something", "", version="2.0") == 0.0
    with pytest.raises(ValueError, match="version"):
        squad_f1("a", "b", version="3")


def tiny_squad(answers: dict[str, list[str]]) -> dict:
    qas = [
        {"id": qid, "question": "?", "answers": [{"text": t} for t in texts]}
        for qid, texts in answers.items()
    ]
    return {"version": "x", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


def test_squad_em_f1_small_datasets(tmp_path, caplog):
    data = tiny_squad({"q1": ["Denver Broncos", "The Broncos"], "q2": ["Carolina"]})
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        res = squad_em_f1(path, {"q1": "broncos"})
    assert "Unanswered question q2 will receive score 0." in caplog.text
    assert res == {"exact_match": 50.0, "f1": 50.0, "total": 2, "unanswered": 1}

    v2 = tiny_squad({"a": ["Paris"], "b": [], "c": []})
    res = squad_em_f1(v2, {"a": "paris", "b": "", "c": "London"}, version="2.0")
    assert res["exact_match"] == pytest.approx(200 / 3) and res["f1"] == pytest.approx(200 / 3)
    assert (res["HasAns_exact"], res["HasAns_total"]) == (100.0, 1)
    assert (res["NoAns_exact"], res["NoAns_f1"], res["NoAns_total"]) == (50.0, 50.0, 2)
    with pytest.raises(ValueError, match="no questions"):
        squad_em_f1({"data": []}, {})


def test_squad_em_f1_on_real_dev():
    articles = load_squad_articles(data_file("squad_v1.1", "dev-v1.1.json.zip"))
    qas = [qa for a in articles for p in a["paragraphs"] for qa in p["qas"]]
    assert len(qas) == 10570
    gold = {qa["id"]: qa["answers"][0]["text"] for qa in qas}
    assert squad_em_f1(articles, gold) == {"exact_match": 100.0, "f1": 100.0, "total": 10570, "unanswered": 0}

    empty = squad_em_f1(articles, {qid: "" for qid in gold})
    assert empty["f1"] == 0.0
    # three questions have the gold answer '.', which normalises to '' and so matches exactly
    assert empty["exact_match"] == pytest.approx(100 * 3 / 10570)


# ----------------------------------------------------------------------------- CMRC 2018


def test_cmrc_segmentation():
    assert mixed_segmentation("2008年北京 Beijing Olympics") == [
        "2008", "年", "北", "京", " ", "beijing", " ", "olympics",
    ]  # fmt: skip
    # with rm_punc the space is dropped and no longer splits the English run
    assert mixed_segmentation("2008年北京 Beijing Olympics", rm_punc=True) == [
        "2008",
        "年",
        "北",
        "京",
        "beijingolympics",
    ]
    assert mixed_segmentation("《三国》：don't") == ["《", "三", "国", "》", "：", "do", "n't"]
    assert mixed_segmentation("u.s.a.") == ["u.s.a", "."]
    assert mixed_segmentation("(abc),def") == ["(", "abc", ")", ",", "def"]
    assert remove_punctuation(" A-B：《书》 ") == "ab书"
    assert remove_punctuation("好……") == "好……"  # the two-character '……' entry never matches


def test_cmrc_hand_scores():
    assert cmrc_exact_match("北 京 大学", ["北京大学"]) == 1.0
    assert cmrc_exact_match("北京大学。", "北京大学") == 1.0
    assert cmrc_exact_match("北京", ["北京大学", "清华"]) == 0.0
    # segments: 7 vs 4 characters, common run 4 -> P = 4/7, R = 1, F1 = 8/11
    assert cmrc_f1("北京大学图书馆", "北京大学") == pytest.approx(8 / 11)
    # the common run must be contiguous: [北 大 学 京] vs [北 京 大 学] -> '大学', P = R = 1/2
    assert cmrc_f1("北大学京", "北京大学") == pytest.approx(0.5)
    assert cmrc_f1("北京大学图书馆", ["清华", "北京大学图书馆"]) == 1.0
    assert cmrc_f1("", "北京") == 0.0


def test_cmrc_em_f1_small_dataset(caplog):
    data = tiny_squad({" Q1 ": ["北京大学"], "Q2": ["清华大学"]})
    with caplog.at_level(logging.WARNING):
        res = cmrc_em_f1(data, {"Q1": "北京大学图书馆"})
    assert "Unanswered question: Q2" in caplog.text
    assert res["exact_match"] == 0.0
    assert res["f1"] == pytest.approx(4 / 11)
    assert res["average"] == pytest.approx(2 / 11)
    assert (res["total"], res["unanswered"]) == (2, 1)


def test_cmrc_em_f1_on_real_dev():
    path = data_file("cmrc2018", "cmrc2018_dev.json")
    articles = load_squad_articles(path)
    gold = {qa["id"]: qa["answers"][0]["text"] for a in articles for p in a["paragraphs"] for qa in p["qas"]}
    res = cmrc_em_f1(path, gold)
    assert (res["exact_match"], res["f1"], res["average"], res["total"]) == (1.0, 1.0, 1.0, 3219)
    assert cmrc_em_f1(articles, {qid: "" for qid in gold})["f1"] == 0.0
