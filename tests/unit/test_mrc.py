"""MRCReader and MRC head (spec §5.5, §8.4): windows, max-context and answer mapping against independent
re-implementations of BERT's logic on real SQuAD/CMRC data, data errors, SQuAD 2.0, and n-best/null selection."""

from __future__ import annotations

import json
import logging
import math
import unicodedata
import zipfile

import numpy as np
import pytest
import torch
from conftest import shared
from reference_tokenizer import full_tokenize

import torchpalm as palm
from torchpalm.head.mrc import PAD_LOGIT, extract_answers
from torchpalm.reader import DataError
from torchpalm.reader.mrc import FIRST_UNIQUE_ID, MRCExample, MRCFeature, read_squad_json
from torchpalm.tokenizer import load_vocab


# ---------------------------------------------------------------- helpers and independent references
def squad_file(tmp_path, paragraphs, name="data.json", version="1.1"):
    """Writes [(context, [(qid, question, answer_text, answer_start, is_impossible?), ...]), ...]."""
    data = {"version": version, "data": [{"title": "t", "paragraphs": [
        {"context": ctx, "qas": [
            {"id": q[0], "question": q[1],
             "answers": [] if q[2] is None else [{"text": q[2], "answer_start": q[3]}],
             **({"is_impossible": q[4]} if len(q) > 4 else {})} for q in qas]}
        for ctx, qas in paragraphs]}]}
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return str(path)


def bert_doc_spans(n, max_tokens_for_doc, doc_stride):
    """BERT run_squad.py's sliding-window loop, verbatim in structure."""
    spans, start_offset = [], 0
    while start_offset < n:
        length = n - start_offset
        if length > max_tokens_for_doc:
            length = max_tokens_for_doc
        spans.append((start_offset, length))
        if start_offset + length == n:
            break
        start_offset += min(length, doc_stride)
    return spans


def bert_is_max_context(spans, cur_span_index, position):
    """BERT run_squad.py's `_check_is_max_context`."""
    best_score, best_span_index = None, None
    for span_index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_span_index = score, span_index
    return cur_span_index == best_span_index


def normalise(text, lower=True):
    """What WordPiece sees of a text: accents stripped and lower-cased (uncased), whitespace removed."""
    if lower:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    return "".join(text.split())


def decode(tokenizer, ids):
    return "".join(t[2:] if t.startswith("##") else t for t in tokenizer.convert_ids_to_tokens(ids))


def squad_dev():
    return str(shared("squad_v1.1", "dev-v1.1.json.zip"))


@pytest.fixture(scope="module")
def longest_squad(tmp_path_factory):
    """The 6 longest SQuAD dev paragraphs with their first two questions (several windows each)."""
    data = read_squad_json(squad_dev())
    paragraphs = sorted((p for a in data["data"] for p in a["paragraphs"]), key=lambda p: -len(p["context"]))[:6]
    out = tmp_path_factory.mktemp("squad") / "longest.json"
    out.write_text(json.dumps({"version": "1.1", "data": [{"title": "long", "paragraphs": [
        {**p, "qas": p["qas"][:2]} for p in paragraphs]}]}), encoding="utf-8")
    return str(out)


# ---------------------------------------------------------------- windows and max context
@pytest.mark.parametrize("max_len,max_query_len,stride", [(64, 12, 24), (48, 8, 100), (128, 64, 7)])
def test_windows_match_bert_on_long_squad_paragraphs(longest_squad, uncased_vocab, max_len, max_query_len, stride):
    reader = palm.reader.MRCReader(uncased_vocab, max_len, max_query_len, stride, do_lower_case=True,
                                   phase="predict")
    reader.load_data(longest_squad, 4)
    vocab = load_vocab(uncased_vocab)
    out = reader.get_epoch_outputs()
    examples, features = out["examples"], out["features"]
    assert len(examples) == 12 and reader.num_examples == len(features)
    assert [f.unique_id for f in features] == list(range(FIRST_UNIQUE_ID, FIRST_UNIQUE_ID + len(features)))
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    most_windows = 0
    for i, ex in enumerate(examples):
        doc = full_tokenize(ex.context, vocab, True)  # independent pure-Python tokenizer
        query = full_tokenize(ex.question_text, vocab, True)[:max_query_len]
        spans = bert_doc_spans(len(doc), max_len - len(query) - 3, stride)
        feats = [f for f in features if f.example_index == i]
        most_windows = max(most_windows, len(feats))
        assert [(f.doc_start, f.num_doc_tokens) for f in feats] == spans
        for k, (f, (start, length)) in enumerate(zip(feats, spans)):
            assert f.doc_span_index == k and f.doc_offset == len(query) + 2
            assert f.token_ids.tolist() == [cls, *query, sep, *doc[start:start + length], sep]
            assert len(f.token_ids) <= max_len
            assert f.segment_ids.tolist() == [0] * (len(query) + 2) + [1] * (length + 1)
            assert f.token_is_max_context.tolist() == [bert_is_max_context(spans, k, start + j)
                                                       for j in range(length)]
            assert f.token_to_orig_map == {len(query) + 2 + j: start + j for j in range(length)}
    assert most_windows >= 4


def test_train_windows_keep_exactly_those_holding_the_answer(longest_squad, uncased_vocab):
    def load(**kw):
        r = palm.reader.MRCReader(uncased_vocab, 64, 12, 24, do_lower_case=True, **kw)
        r.load_data(longest_squad, 4)
        return r
    keep_all, dropped = load(remove_noanswer=False), load()
    pred = load(phase="predict")
    assert keep_all.num_examples == pred.num_examples > dropped.num_examples > 0
    with_answer = [f for f in keep_all.features if f.start_position > 0]
    assert [(f.example_index, f.doc_start) for f in with_answer] == \
           [(f.example_index, f.doc_start) for f in dropped.features]
    assert all(f.start_position == f.end_position == 0 for f in keep_all.features if f.start_position == 0)
    for f in dropped.features:
        ex = dropped.examples[f.example_index]
        s, e = f.start_position - f.doc_offset, f.end_position - f.doc_offset
        assert 0 <= s <= e < f.num_doc_tokens
        # the span covers the answer, and its first/last tokens overlap it (tightest span)
        assert f.token_offsets[s][0] <= ex.start_char < f.token_offsets[s][1]
        assert f.token_offsets[e][0] < ex.end_char <= f.token_offsets[e][1]


def test_an_answer_at_a_window_edge_belongs_to_the_window_exactly_when_it_fits(uncased_vocab, tmp_path):
    """Answers that end on a window's last token or start on its first are in that window; one token further and
    they are not (the window check's `<` / `<=` at both edges)."""
    words = [str(n) for n in range(100, 140)]  # 40 words, one WordPiece token each
    ctx = " ".join(words)

    def char_span(first, last):  # the answer text covering words[first..last]
        start = ctx.index(words[first])
        return ctx[start:ctx.index(words[last]) + len(words[last])], start

    def features(first, last, **kw):
        text, start = char_span(first, last)
        path = squad_file(tmp_path, [(ctx, [("q", "which ?", text, start)])], name=f"a{first}_{last}.json")
        reader = palm.reader.MRCReader(uncased_vocab, 24, 4, 8, do_lower_case=True, **kw)
        reader.load_data(path, 1)
        return reader.features

    windows = [(f.doc_start, f.num_doc_tokens) for f in features(0, 0, remove_noanswer=False)]
    assert len(words) == sum(n for _, n in windows[-1:]) + windows[-1][0]  # one token per word
    (start0, n0), (start1, _) = windows[0], windows[1]
    assert start1 < start0 + n0 - 1  # overlapping windows: an answer near the edge can sit in one or both
    edge = start0 + n0 - 1  # window 0's last token

    def holding(first, last):
        """{window start: (start, end) token of the answer in that window} of the windows that hold it."""
        return {f.doc_start: (f.start_position - f.doc_offset, f.end_position - f.doc_offset)
                for f in features(first, last)}

    # ends exactly on window 0's last token: window 0 holds it, to its last token
    assert holding(edge - 1, edge)[start0] == (n0 - 2, n0 - 1)
    # ends one token past it: window 0 must not claim it (its end would be the [SEP] after the document)
    assert start0 not in holding(edge - 1, edge + 1)
    # starts exactly on window 1's first token: window 1 holds it from its first token
    assert holding(start1, start1 + 1)[start1] == (0, 1)
    # starts one token before: window 1 must not claim it
    assert start1 not in holding(start1 - 1, start1)
    # and without dropping windows, the ones that do not hold the answer point to [CLS]
    kept = {f.doc_start: f.start_position for f in features(edge - 1, edge + 1, remove_noanswer=False)}
    assert kept[start0] == 0 and kept[start1] > 0


# ---------------------------------------------------------------- answer char -> token mapping on real data
def _span_text(reader, f):
    ex = reader.examples[f.example_index]
    s, e = f.start_position - f.doc_offset, f.end_position - f.doc_offset
    return ex, ex.context[f.token_offsets[s][0]:f.token_offsets[e][1]], f.token_ids[f.start_position:f.end_position + 1]


def test_answer_mapping_round_trips_on_all_squad_dev(uncased_vocab):
    reader = palm.reader.MRCReader(uncased_vocab, 384, 64, 128, do_lower_case=True)
    reader.load_data(squad_dev(), 16)
    assert len(reader.examples) == 10570
    first_window = {}
    for f in reader.features:
        first_window.setdefault(f.example_index, f)
    exact = decoded_ok = 0
    for f in first_window.values():
        ex, sliced, ids = _span_text(reader, f)
        assert ex.orig_answer_text.strip() in sliced, (ex.qas_id, ex.orig_answer_text, sliced)
        exact += sliced == ex.orig_answer_text.strip()
        decoded_ok += decode(reader.tokenizer, ids) == normalise(ex.orig_answer_text)
    # Not 100%: an answer may end inside a word ("1990" of "1990s"); the span then covers the whole sub-token.
    assert exact / len(first_window) > 0.99 and decoded_ok / len(first_window) > 0.98, (exact, decoded_ok)


def test_answer_mapping_round_trips_on_cmrc_chinese(chinese_vocab, caplog):
    shared("cmrc2018", "cmrc2018_trial.json")
    reader = palm.reader.MRCReader(chinese_vocab, 512, 64, 128, do_lower_case=True, skip_bad_examples=True)
    with caplog.at_level(logging.INFO, logger="torchpalm"):
        reader.load_data(str(shared("cmrc2018", "cmrc2018_trial.json")), 8)
    assert "converting examples to features..." in caplog.text
    assert "skipped 5 question(s)" in caplog.text  # 5 trial answers are not at their answer_start
    assert len(reader.examples) == 997
    exact = decoded_ok = 0
    seen = set()
    for f in reader.features:
        if f.example_index in seen:
            continue
        seen.add(f.example_index)
        ex, sliced, ids = _span_text(reader, f)
        assert ex.orig_answer_text.strip() in sliced
        exact += sliced == ex.orig_answer_text.strip()
        decoded_ok += decode(reader.tokenizer, ids).replace("[UNK]", "") == normalise(ex.orig_answer_text)
    assert exact / len(seen) > 0.98 and decoded_ok / len(seen) > 0.9, (exact, decoded_ok, len(seen))


def test_one_tokenisation_for_train_and_predict(chinese_vocab, tmp_path):
    ctx = "NGC 6231是一个位于天蝎座的疏散星团，天球座标为赤经16时54分，赤纬-41度48分。Ω-force开发了它。"
    ans = "赤经16时54分，赤纬-41度48分"
    path = squad_file(tmp_path, [(ctx, [("Q0", "NGC 6231的经纬度是多少？", ans, ctx.index(ans))])])
    train = palm.reader.MRCReader(chinese_vocab, 64, 16, 16, do_lower_case=True)
    train.load_data(path, 1)
    pred = palm.reader.MRCReader(chinese_vocab, 64, 16, 16, do_lower_case=True, phase="predict")
    pred.load_data(path, 1)
    by_start = {f.doc_start: f for f in pred.features}
    for f in train.features:
        assert f.token_ids.tolist() == by_start[f.doc_start].token_ids.tolist()
    # The head, given logits peaked on the gold span, returns the exact original text: no inserted spaces.
    results = []
    for f in pred.features:
        t = next((g for g in train.features if g.doc_start == f.doc_start), None)
        start, end = np.zeros(64, np.float32), np.zeros(64, np.float32)
        if t is not None:
            start[t.start_position], end[t.end_position] = 10, 10
        results.append((f.unique_id, start, end))
    preds, _, _ = extract_answers(pred.examples, pred.features, results, max_ans_len=64)
    assert preds == {"Q0": ans}


def test_accents_and_case_come_back_from_the_original_context(uncased_vocab, tmp_path):
    ctx = "In 1903 the Café Ångström — run by Zoë Ñúñez — opened near the Rhône."
    ans = "Café Ångström"
    path = squad_file(tmp_path, [(ctx, [("q", "Which café?", ans, ctx.index(ans))])])
    train = palm.reader.MRCReader(uncased_vocab, 64, 16, 16, do_lower_case=True)
    train.load_data(path, 1)
    f = train.features[0]
    assert decode(train.tokenizer, f.token_ids[f.start_position:f.end_position + 1]) == "cafeangstrom"
    start, end = np.zeros(len(f.token_ids), np.float32), np.zeros(len(f.token_ids), np.float32)
    start[f.start_position], end[f.end_position] = 5, 5
    preds, _, _ = extract_answers(train.examples, train.features, [(f.unique_id, start, end)])
    assert preds == {"q": ans}


@pytest.mark.parametrize("ans", ["cafe\u0301", "\u05d9\u05b4\u05e8\u05b0\u05de\u05b0\u05d9\u05b8\u05d4\u05d5\u05bc"])
def test_answers_keep_trailing_combining_marks(uncased_vocab, tmp_path, ans):
    # Accent stripping deletes separately written combining marks; the answer span must still include them.
    ctx = f"it is called {ans} here"
    path = squad_file(tmp_path, [(ctx, [("q", "name?", ans, ctx.index(ans))])])
    train = palm.reader.MRCReader(uncased_vocab, 64, 16, 16, do_lower_case=True)
    train.load_data(path, 1)
    f = train.features[0]
    assert _span_text(train, f)[1] == ans


# ---------------------------------------------------------------- data errors
def test_answer_not_at_answer_start_names_the_question(uncased_vocab, tmp_path, caplog):
    ctx = "The quick brown fox jumps over the lazy dog."
    path = squad_file(tmp_path, [(ctx, [("good-1", "What jumps?", "quick brown fox", 4),
                                        ("bad-42", "Over what?", "lazy dog", 30),
                                        ("good-2", "Who is lazy?", "dog", 40)])])
    reader = palm.reader.MRCReader(uncased_vocab, 64, 16, 16, do_lower_case=True)
    with pytest.raises(DataError, match=r"data\.json.*'bad-42'.*'lazy dog' is not at answer_start 30"):
        reader.load_data(path, 2)
    skipping = palm.reader.MRCReader(uncased_vocab, 64, 16, 16, do_lower_case=True, skip_bad_examples=True)
    with caplog.at_level(logging.INFO, logger="torchpalm"):
        skipping.load_data(path, 2)
    assert "skipped 1 question(s)" in caplog.text
    assert [e.qas_id for e in skipping.examples] == ["good-1", "good-2"] and skipping.num_examples == 2
    # predict ignores answers: every question is kept
    pred = palm.reader.MRCReader(uncased_vocab, 64, 16, 16, do_lower_case=True, phase="predict")
    pred.load_data(path, 2)
    assert [e.qas_id for e in pred.examples] == ["good-1", "bad-42", "good-2"]


@pytest.mark.parametrize("answers,message", [
    (None, "'q1'.*has no answer"),
    ("   ", "'q1'.*is empty"),
])
def test_missing_or_empty_training_answer(uncased_vocab, tmp_path, answers, message):
    path = squad_file(tmp_path, [("some context here", [("q1", "what?", answers, 0)])])
    reader = palm.reader.MRCReader(uncased_vocab, 64, 16, 16)
    with pytest.raises(DataError, match=message):
        reader.load_data(path, 1)


def test_malformed_files_are_named(uncased_vocab, tmp_path):
    reader = palm.reader.MRCReader(uncased_vocab, 64, 16, 16, phase="predict")
    bad = tmp_path / "broken.json"
    bad.write_text('{"data": [\n  {"paragraphs": [\n    {"context": "x",,}]}]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON"):
        reader.load_data(str(bad), 1)
    no_data = tmp_path / "nodata.json"
    no_data.write_text('{"version": "1.1"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"nodata\.json: expected a SQuAD-style object"):
        reader.load_data(str(no_data), 1)
    no_ctx = tmp_path / "noctx.json"
    no_ctx.write_text('{"data": [{"paragraphs": [{"qas": []}]}]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"noctx\.json: article 0, paragraph 0: missing the 'context'"):
        reader.load_data(str(no_ctx), 1)
    with pytest.raises(FileNotFoundError):
        reader.load_data(str(tmp_path / "absent.json"), 1)


def test_zip_with_one_json_loads_and_two_is_an_error(uncased_vocab, tmp_path):
    src = squad_file(tmp_path, [("alpha beta gamma", [("z1", "which?", "beta", 6)])])
    good, two = tmp_path / "one.zip", tmp_path / "two.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.write(src, "inner.json")
    with zipfile.ZipFile(two, "w") as zf:
        zf.write(src, "a.json")
        zf.write(src, "b.json")
    reader = palm.reader.MRCReader(uncased_vocab, 64, 16, 16)
    reader.load_data(str(good), 1)
    assert reader.examples[0].qas_id == "z1" and reader.examples_json["data"][0]["title"] == "t"
    with pytest.raises(DataError, match=r"two\.zip: the archive must hold exactly one \.json"):
        reader.load_data(str(two), 1)


def hf_records(nested: dict) -> list[dict]:
    """SQuAD as HuggingFace `datasets` exports it: one flat record per question."""
    return [{"id": qa["id"], "title": article.get("title", ""), "context": p["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in nested["data"] for p in article["paragraphs"] for qa in p["qas"]]


@pytest.mark.parametrize("layout", ["jsonl", "array"])
def test_huggingface_flat_squad_reads_as_the_nested_file(uncased_vocab, tmp_path, layout):
    nested = read_squad_json(squad_dev())
    nested["data"] = nested["data"][:3]
    records = hf_records(nested)
    path = tmp_path / f"squad.{layout}.json"
    with open(path, "w", encoding="utf-8") as f:
        if layout == "jsonl":
            f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
        else:
            json.dump(records, f, ensure_ascii=False, indent=1)
    (tmp_path / "nested.json").write_text(json.dumps(nested, ensure_ascii=False), encoding="utf-8")
    for phase in ("train", "predict"):
        flat = palm.reader.MRCReader(uncased_vocab, 384, 64, 128, do_lower_case=True, phase=phase)
        flat.load_data(str(path), 16)
        ref = palm.reader.MRCReader(uncased_vocab, 384, 64, 128, do_lower_case=True, phase=phase)
        ref.load_data(str(tmp_path / "nested.json"), 16)
        assert len(flat.examples) == len(ref.examples) == len(records)
        assert [(e.qas_id, e.answers, e.start_char) for e in flat.examples] == \
            [(e.qas_id, e.answers, e.start_char) for e in ref.examples]
        assert len(flat.features) == len(ref.features)
        assert all(np.array_equal(a.token_ids, b.token_ids) and a.start_position == b.start_position
                   for a, b in zip(flat.features, ref.features))
    # a paragraph's questions stay one paragraph (its context is encoded once)
    regrouped = read_squad_json(str(path))
    assert [len(p["qas"]) for a in regrouped["data"] for p in a["paragraphs"]] == \
        [len(p["qas"]) for a in nested["data"] for p in a["paragraphs"]]


def test_huggingface_flat_squad_v2_and_errors(uncased_vocab, tmp_path):
    ctx = "the answer is here."
    path = tmp_path / "v2.jsonl"
    path.write_text(json.dumps({"id": "a", "context": ctx, "question": "where?",
                                "answers": {"text": ["here"], "answer_start": [14]}}) + "\n" +
                    json.dumps({"id": "b", "context": ctx, "question": "never?",
                                "answers": {"text": [], "answer_start": []}}) + "\n", encoding="utf-8")
    r = palm.reader.MRCReader(uncased_vocab, 48, 8, 16, do_lower_case=True, with_negative=True)
    r.load_data(str(path), 1)
    assert [(e.qas_id, e.is_impossible, e.orig_answer_text) for e in r.examples] == [("a", False, "here"),
                                                                                      ("b", True, None)]
    for text, message in [
        ('{"id": "a", "context": "x", "question": "q"}\n{"id": "b", "question": "q"}\n',
         r"bad\.jsonl:2: expected a question record with 'context' and 'question'"),
        ('{"id": "a", "context": "x", "question": "q", "answers": {"text": ["x"], "answer_start": []}}\n',
         r"bad\.jsonl:1: 'answers' must hold lists 'text' and 'answer_start' of the same length"),
        ('{"id": "a", "context": "x", "question": "q"}\n{"id": "b", "context": "x",, }\n',
         r"bad\.jsonl:2: not a JSON object"),
        ('[\n {"id": "a", "context": "x", "question": "q"},\n 7\n]', r"bad\.jsonl:3: expected a question record"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            palm.reader.MRCReader(uncased_vocab, 48, 8, 16, phase="predict").load_data(str(bad), 1)


def test_constructor_checks(uncased_vocab):
    with pytest.raises(ValueError, match="leaves no room"):
        palm.reader.MRCReader(uncased_vocab, 64, 61, 16)
    with pytest.raises(ValueError, match="doc_stride"):
        palm.reader.MRCReader(uncased_vocab, 64, 16, 0)
    with pytest.raises(ValueError, match="max_ans_len"):
        palm.head.MRC(64, 32, max_ans_len=None)


# ---------------------------------------------------------------- SQuAD 2.0
def test_squad2_impossible_questions(uncased_vocab, tmp_path):
    ctx = " ".join(f"word{i}" for i in range(60)) + " the answer is here."
    path = squad_file(tmp_path, [(ctx, [("pos", "where?", "answer", ctx.index("answer")),
                                        ("neg", "never?", None, 0, True)])], version="v2.0")

    def load(**kw):
        r = palm.reader.MRCReader(uncased_vocab, 48, 8, 16, do_lower_case=True, **kw)
        r.load_data(path, 1)
        return r
    plain = load()
    assert [e.qas_id for e in plain.examples] == ["pos"]
    neg = load(with_negative=True)
    assert [e.qas_id for e in neg.examples] == ["pos", "neg"] and neg.examples[1].is_impossible
    neg_feats = [f for f in neg.features if f.example_index == 1]
    assert len(neg_feats) > 2 and all(f.start_position == f.end_position == 0 for f in neg_feats)
    assert all(f.start_position > 0 for f in neg.features if f.example_index == 0)
    pred = load(phase="predict")
    assert [e.qas_id for e in pred.examples] == ["pos", "neg"]


# ---------------------------------------------------------------- batches
def test_batches_per_phase(uncased_vocab, longest_squad, tiny_config):
    backbone = palm.backbone.BERT.from_config(tiny_config)
    train = palm.reader.MRCReader(uncased_vocab, 64, 12, 24, do_lower_case=True, seed=3)
    train.load_data(longest_squad, 4, num_epochs=2)
    train.register_with(backbone)
    assert set(train.outputs_attr) == {"token_ids", "position_ids", "segment_ids", "input_mask",
                                       "start_positions", "end_positions"}
    batches = list(train)
    assert len(batches) == 2 * (train.num_examples // 4)
    b = batches[0]
    assert b["start_positions"].shape == (4,) and b["start_positions"].dtype == torch.int64
    assert b["input_mask"].dtype == torch.int64 and b["token_ids"].shape[1] <= 64
    assert (b["start_positions"] <= b["end_positions"]).all()
    per_epoch = train.num_examples // 4
    first = torch.cat([x["start_positions"] for x in batches[:per_epoch]]).tolist()
    second = torch.cat([x["start_positions"] for x in batches[per_epoch:]]).tolist()
    assert first != second  # features are reshuffled every epoch
    pred = palm.reader.MRCReader(uncased_vocab, 64, 12, 24, do_lower_case=True, phase="predict")
    pred.load_data(longest_squad, 5)
    pred.register_with(backbone)
    pred_batches = list(pred)
    ids = torch.cat([x["unique_ids"] for x in pred_batches]).tolist()
    assert ids == [f.unique_id for f in pred.features]  # in order, last partial batch kept
    assert len(pred_batches) == -(-pred.num_examples // 5) and "start_positions" not in pred_batches[0]


# ---------------------------------------------------------------- head: loss and masking
def test_head_masks_padding_and_averages_the_two_losses():
    torch.manual_seed(0)
    head = palm.head.MRC(16, 8)
    enc = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    batch = {"input_mask": mask, "start_positions": torch.tensor([5, 3, 1]), "end_positions": torch.tensor([5, 3, 2])}
    out = head({"encoder_outputs": enc}, batch)
    logits = enc @ head.cls_squad_out.weight.T + head.cls_squad_out.bias
    expect = 0.0
    for i in range(3):
        n = int(mask[i].sum())
        for k, pos in ((0, batch["start_positions"][i]), (1, batch["end_positions"][i])):
            expect += -torch.log_softmax(logits[i, :n, k], -1)[pos] / 6  # mean over batch, then / 2
    torch.testing.assert_close(out["loss"], expect)
    assert (out["start_logits"][1, 4:] == PAD_LOGIT).all() and (out["end_logits"][2, 3:] == PAD_LOGIT).all()
    # what sits at padding positions cannot change the loss
    enc2 = enc.clone()
    enc2[1, 4:] = 100.0
    torch.testing.assert_close(head({"encoder_outputs": enc2}, batch)["loss"], out["loss"])
    pred = palm.head.MRC(16, 8, phase="predict")
    p_out = pred({"encoder_outputs": enc}, {"input_mask": mask, "unique_ids": torch.tensor([7, 8, 9])})
    assert "loss" not in p_out and p_out["unique_ids"].tolist() == [7, 8, 9]
    assert set(pred.outputs_attr) == {"start_logits", "end_logits", "unique_ids"}
    assert set(pred.inputs_attrs["reader"]) == {"unique_ids", "input_mask"}


# ---------------------------------------------------------------- head: n-best and null selection
def _toy(max_context=None, n_windows=1):
    """Context 'alpha beta gamma delta epsilon', query of 2 tokens: doc positions 4..8, length 10, padded to 12."""
    ctx = "alpha beta gamma delta epsilon"
    offsets = np.array([(0, 5), (6, 10), (11, 16), (17, 22), (23, 30)])
    feats = []
    for w in range(n_windows):
        flags = np.ones(5, bool) if max_context is None else np.asarray(max_context[w])
        feats.append(MRCFeature(FIRST_UNIQUE_ID + w, 0, w, np.arange(10), np.zeros(10, np.int64), 4, 0,
                                offsets, flags))
    return [MRCExample("q", "?", ctx, ["beta"])], feats


def _logits(peaks, length=12, base=0.0):
    x = np.full(length, base, np.float32)
    x[10:] = PAD_LOGIT
    for pos, value in peaks.items():
        x[pos] = value
    return x


def test_nbest_filters_and_ranking():
    ex, feats = _toy()

    def run(s, e, **kw):
        return extract_answers(ex, feats, [(feats[0].unique_id, _logits(s), _logits(e))], **kw)

    assert run({5: 3}, {6: 3})[0] == {"q": "beta gamma"}
    # query and [CLS]/[SEP] positions are never answers, however high their logits
    assert run({1: 50, 0: 40, 9: 30, 5: 3}, {2: 50, 9: 30, 6: 3})[0] == {"q": "beta gamma"}
    # end before start is skipped: (delta, beta) scores 10 but the answer is (alpha, beta), 7
    assert run({7: 5, 4: 2}, {5: 5, 8: 1})[0] == {"q": "alpha beta"}
    # max_ans_len counts sub-tokens
    assert run({4: 5}, {8: 5, 5: 1}, max_ans_len=2)[0] == {"q": "alpha beta"}
    preds, nbest, odds = run({5: 3, 6: 2}, {6: 3, 7: 1}, n_best_size=3)
    entries = nbest["q"]
    assert [e["text"] for e in entries] == ["beta gamma", "gamma", "beta gamma delta"] and odds == {}
    probs = [e["probability"] for e in entries]
    assert math.isclose(sum(probs), 1.0) and probs == sorted(probs, reverse=True)
    scores = [e["start_logit"] + e["end_logit"] for e in entries]
    assert np.allclose(probs, np.exp(scores) / np.exp(scores).sum())


def test_start_must_have_max_context_and_texts_are_distinct():
    ex, feats = _toy(max_context=[[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], n_windows=2)
    res = [(feats[0].unique_id, _logits({5: 9, 6: 1}, base=-9), _logits({5: 9, 6: 1}, base=-9)),
           (feats[1].unique_id, _logits({5: 4, 6: 1}, base=-9), _logits({5: 4, 6: 1}, base=-9))]
    preds, nbest, _ = extract_answers(ex, feats, res, n_best_size=20)
    # window 0's 'beta' (score 18) is not max-context there; window 1's 'beta' (8) wins
    assert preds == {"q": "beta"}
    assert nbest["q"][0]["start_logit"] == 4 and nbest["q"][0]["end_logit"] == 4
    texts = [e["text"] for e in nbest["q"]]
    assert len(texts) == len(set(texts)) <= 20 and texts[0] == "beta"


def test_null_answer_threshold_and_odds():
    ex, feats = _toy(n_windows=2)
    res = [(feats[0].unique_id, _logits({0: 2, 5: 3}), _logits({0: 2, 5: 3})),   # null 4
           (feats[1].unique_id, _logits({0: 1, 6: 2}), _logits({0: 0.5, 6: 2}))]  # null 1.5 (the minimum)
    for threshold, expected in ((-5.0, ""), (0.0, "beta"), (-4.4, "beta"), (-4.6, "")):
        preds, nbest, odds = extract_answers(ex, feats, res, with_negative=True,
                                             null_score_diff_threshold=threshold)
        assert math.isclose(odds["q"], 1.5 - 6.0)
        assert preds == {"q": expected}, threshold
        assert "" in [e["text"] for e in nbest["q"]]
    # no valid span at all: BERT's placeholder keeps a non-null entry
    preds, nbest, odds = extract_answers(ex, feats[:1], [(feats[0].unique_id, _logits({0: 3}), _logits({0: 3}))],
                                         with_negative=True, max_ans_len=1, n_best_size=1)
    assert [e["text"] for e in nbest["q"]] == ["empty", ""] and preds == {"q": ""} and odds == {"q": 6.0}


def bert_write_predictions(examples, features, results, n_best_size, max_ans_len, with_negative, threshold):
    """A literal port of BERT run_squad.py's write_predictions; the final text is the character slice."""
    def best_indexes(logits, n):
        return [i for i, _ in sorted(enumerate(logits), key=lambda x: x[1], reverse=True)[:n]]
    by_uid = {u: (s.tolist(), e.tolist()) for u, s, e in results}
    all_preds, all_nbest, odds = {}, {}, {}
    for ei, ex in enumerate(examples):
        feats = [f for f in features if f.example_index == ei]
        prelim = []
        score_null, min_null_fi, null_s, null_e = 1000000, 0, 0, 0
        for fi, f in enumerate(feats):
            sl, el = by_uid[f.unique_id]
            tokens = f.token_ids.tolist()
            if with_negative:
                null = sl[0] + el[0]
                if null < score_null:
                    score_null, min_null_fi, null_s, null_e = null, fi, sl[0], el[0]
            for s in best_indexes(sl, n_best_size):
                for e in best_indexes(el, n_best_size):
                    if s >= len(tokens) or e >= len(tokens):
                        continue
                    if s not in f.token_to_orig_map or e not in f.token_to_orig_map:
                        continue
                    if not f.token_is_max_context[s - f.doc_offset]:
                        continue
                    if e < s or e - s + 1 > max_ans_len:
                        continue
                    prelim.append((fi, s, e, sl[s], el[e]))
        if with_negative:
            prelim.append((min_null_fi, 0, 0, null_s, null_e))
        prelim = sorted(prelim, key=lambda x: x[3] + x[4], reverse=True)
        seen, nbest = set(), []
        for fi, s, e, ls, le in prelim:
            if len(nbest) >= n_best_size:
                break
            if s > 0:
                f = feats[fi]
                text = ex.context[f.token_offsets[s - f.doc_offset][0]:f.token_offsets[e - f.doc_offset][1]]
                if text in seen:
                    continue
            else:
                text = ""
            seen.add(text)
            nbest.append((text, ls, le))
        if with_negative:
            if "" not in seen:
                nbest.append(("", null_s, null_e))
            if len(nbest) == 1:
                nbest.insert(0, ("empty", 0.0, 0.0))
        if not nbest:
            nbest.append(("empty", 0.0, 0.0))
        total = [a + b for _, a, b in nbest]
        m = max(total)
        exps = [math.exp(t - m) for t in total]
        probs = [x / sum(exps) for x in exps]
        all_nbest[ex.qas_id] = [(t, p) for (t, _, _), p in zip(nbest, probs)]
        if not with_negative:
            all_preds[ex.qas_id] = nbest[0][0]
        else:
            best = next(x for x in nbest if x[0])
            diff = score_null - best[1] - best[2]
            odds[ex.qas_id] = diff
            all_preds[ex.qas_id] = "" if diff > threshold else best[0]
    return all_preds, all_nbest, odds


@pytest.mark.parametrize("with_negative,n_best,max_ans", [(False, 20, 30), (True, 5, 4), (True, 20, 30)])
def test_extract_answers_matches_bert_on_random_logits(longest_squad, uncased_vocab, with_negative, n_best,
                                                       max_ans):
    reader = palm.reader.MRCReader(uncased_vocab, 64, 12, 24, do_lower_case=True, phase="predict")
    reader.load_data(longest_squad, 4)
    out = reader.get_epoch_outputs()
    rng = np.random.default_rng(0)
    results = []
    for f in out["features"]:
        s, e = rng.normal(size=(2, 64)).astype(np.float32)
        s[len(f.token_ids):] = e[len(f.token_ids):] = PAD_LOGIT
        results.append((f.unique_id, s, e))
    threshold = 0.0
    for _ in range(2 if with_negative else 1):
        preds, nbest, odds = extract_answers(out["examples"], out["features"], results, n_best_size=n_best,
                                             max_ans_len=max_ans, with_negative=with_negative,
                                             null_score_diff_threshold=threshold)
        ref_preds, ref_nbest, ref_odds = bert_write_predictions(out["examples"], out["features"], results, n_best,
                                                                max_ans, with_negative, threshold)
        assert preds == ref_preds and len(preds) == 12
        assert {k: [(e["text"], pytest.approx(e["probability"])) for e in v] for k, v in nbest.items()} == ref_nbest
        assert odds == pytest.approx(ref_odds)
        # second round: a threshold between the odds, so that both null and non-null answers are chosen
        threshold = float(np.median(list(odds.values()))) if odds else 0.0
    if with_negative:
        assert "" in preds.values() and set(preds.values()) != {""}


def test_epoch_postprocess_writes_files(tmp_path, chinese_vocab):
    ctx = "光荣和ω-force开发的游戏。"
    path = squad_file(tmp_path, [(ctx, [("中文-1", "谁开发的？", "光荣和ω-force", 0)])])
    reader = palm.reader.MRCReader(chinese_vocab, 32, 8, 8, do_lower_case=True, phase="predict")
    reader.load_data(path, 1)
    f = reader.features[0]
    pos = {int(p) for p in range(f.doc_offset, f.doc_offset + f.num_doc_tokens)}
    start = _logits({min(pos): 5}, len(f.token_ids))
    end = _logits({f.doc_offset + 3: 5}, len(f.token_ids))  # 光 荣 和 ω
    start[len(f.token_ids):] = 0
    for with_negative, out_dir in ((False, None), (True, str(tmp_path / "explicit"))):
        head = palm.head.MRC(8, 32, with_negative=with_negative, phase="predict",
                             pred_output_path=str(tmp_path / "fallback"))
        head.batch_postprocess({"unique_ids": np.array([f.unique_id]), "start_logits": start[None],
                                "end_logits": end[None]})
        preds = head.epoch_postprocess({"reader": reader.get_epoch_outputs()}, output_dir=out_dir)
        where = tmp_path / ("explicit" if out_dir else "fallback")
        text = (where / "predictions.json").read_text(encoding="utf-8")
        assert preds == json.loads(text) == {"中文-1": "光荣和ω"}
        assert '    "中文-1": "光荣和ω"' in text  # indent 4, not ASCII-escaped
        assert json.loads((where / "nbest_predictions.json").read_text(encoding="utf-8"))["中文-1"][0]["text"] == "光荣和ω"
        assert (where / "null_odds.json").exists() == with_negative
    with pytest.raises(ValueError, match="get_epoch_outputs"):
        palm.head.MRC(8, 32, phase="predict").epoch_postprocess({"reader": None})


def test_huggingface_squad_parquet_reads_as_the_nested_file(uncased_vocab, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    nested = read_squad_json(squad_dev())
    nested["data"] = nested["data"][:2]
    records = hf_records(nested)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "validation.parquet")
    flat = palm.reader.MRCReader(uncased_vocab, 384, 64, 128, do_lower_case=True, phase="predict")
    flat.load_data(str(tmp_path / "validation.parquet"), 16)
    (tmp_path / "nested.json").write_text(json.dumps(nested), encoding="utf-8")
    ref = palm.reader.MRCReader(uncased_vocab, 384, 64, 128, do_lower_case=True, phase="predict")
    ref.load_data(str(tmp_path / "nested.json"), 16)
    assert [(e.qas_id, e.answers) for e in flat.examples] == [(e.qas_id, e.answers) for e in ref.examples]
    assert all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(flat.features, ref.features))
