"""The model's own tokenizer in every reader: ids equal `transformers.AutoTokenizer`'s (loaded from the same
folder) on SST-2 sentences, CoNLL words and SQuAD question/context pairs, for a Unigram/Metaspace tokenizer
(DeBERTa-v3's layout), a byte-level BPE (ModernBERT's), a WordPiece tokenizer.json, and the SentencePiece models
XLM-R and DeBERTa-v3 ship; special tokens and templates from the post-processor; clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tokenizer_fixtures import (
    KINDS,
    MAKERS,
    NEEDS_SENTENCEPIECE,
    conll_sentences,
    squad_questions,
    sst2_sentences,
)

import torchpalm as palm
from torchpalm.hf_tokenizer import HFTokenizer
from torchpalm.tokenizer import WordPieceTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=KINDS)
def kind(request) -> str:
    if request.param in NEEDS_SENTENCEPIECE:
        pytest.importorskip("sentencepiece")
    return request.param


@pytest.fixture(scope="module")
def model_dir(kind, tmp_path_factory) -> str:
    return MAKERS[kind](str(tmp_path_factory.mktemp(kind)))


@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.AutoTokenizer.from_pretrained(model_dir)


def with_template(hf, text_a: str, span_a: tuple[int, int], text_b: str, span_b: tuple[int, int]) -> list[int]:
    """transformers' own post-processor around the token spans [start, end) of two texts' encodings."""
    backend = hf.backend_tokenizer
    encodings = []
    for text, (start, end) in ((text_a, span_a), (text_b, span_b)):
        enc = backend.encode(text, add_special_tokens=False)
        enc.truncate(end, direction="right")
        enc.truncate(end - start, direction="left")
        encodings.append(enc)
    return backend.post_process(*encodings, add_special_tokens=True).ids


def write_table(path, header, rows) -> str:
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
    return str(path)


def test_ids_and_special_tokens_equal_transformers(kind, model_dir, hf):
    tok = load_tokenizer("auto", model_dir)
    assert isinstance(tok, HFTokenizer)
    texts = sst2_sentences(2000, start=20000)  # sentences the tokenizer was not trained on
    texts += ["  Two  spaces, Ünïcödé ok?", "tabs\tand\nnewlines", "don't 😀 [MASK] <mask> [SEP]", ""]
    assert tok.encode_batch(texts) == hf(texts, add_special_tokens=False)["input_ids"]
    assert (tok.pad_id, tok.mask_id, tok.cls_id, tok.sep_id, tok.unk_id) == (
        hf.pad_token_id, hf.mask_token_id, hf.cls_token_id, hf.sep_token_id, hf.unk_token_id)
    assert tok.vocab_size == len(hf)
    assert set(hf.all_special_ids) <= tok.special_ids


def test_classify_and_match_batches_equal_transformers_pairs(kind, model_dir, hf, tmp_path):
    texts = sst2_sentences(64, start=30000)
    pairs = list(zip(texts[::2], texts[1::2]))
    path = write_table(tmp_path / "pairs.tsv", ["label", "text_a", "text_b"], [["1", a, b] for a, b in pairs])
    expected = hf([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt",
                  return_token_type_ids=True)
    # the folder alone picks its tokenizer.json (or converted SentencePiece model): no tokenizer= needed
    for reader in (palm.reader.ClassifyReader(model_dir, 128, phase="predict"),
                   palm.reader.MatchReader(model_dir, 128, tokenizer="auto", phase="predict")):
        reader.load_data(path, batch_size=len(pairs))
        for name in ("input_mask", "segment_ids"):
            reader.require_attr(name)
        batch = next(iter(reader))
        assert torch.equal(batch["token_ids"], expected["input_ids"])  # the post-processor's pair template
        assert torch.equal(batch["input_mask"], expected["attention_mask"])
        real = expected["attention_mask"].bool()
        assert torch.equal(batch["segment_ids"][real], expected["token_type_ids"][real])
    path = write_table(tmp_path / "single.tsv", ["label", "text_a"], [["0", t] for t in texts])
    reader = palm.reader.ClassifyReader(model_dir, 128, tokenizer="auto", phase="predict")
    reader.load_data(path, batch_size=len(texts))
    assert torch.equal(next(iter(reader))["token_ids"], hf(texts, padding=True, return_tensors="pt")["input_ids"])


def test_pair_truncation_cuts_the_longer_side_first_and_keeps_the_template(kind, model_dir, hf, tmp_path):
    texts = sst2_sentences(40, start=40000)
    pairs = [(a, b) for a, b in zip(texts[::2], texts[1::2])]
    path = write_table(tmp_path / "pairs.tsv", ["label", "text_a", "text_b"], [["1", a, b] for a, b in pairs])
    reader = palm.reader.ClassifyReader(model_dir, 12, tokenizer="auto", phase="predict")
    reader.load_data(path, batch_size=1)
    n_special = hf.num_special_tokens_to_add(pair=True)
    for (a, b), batch in zip(pairs, reader):
        ids_a, ids_b = hf([a, b], add_special_tokens=False)["input_ids"]
        la, lb = len(ids_a), len(ids_b)
        while la + lb > 12 - n_special:  # PALM's rule: drop from the longer, from b when equal
            la, lb = (la - 1, lb) if la > lb else (la, lb - 1)
        expected = with_template(hf, a, (0, la), b, (0, lb))
        assert batch["token_ids"][0].tolist() == expected


def word_starts_of(enc) -> list[int]:
    """The first token of each word, from an encoding's word ids."""
    starts, previous = [], None
    for position, word in enumerate(enc.word_ids()):
        if word is not None and word != previous:
            starts.append(position)
        previous = word
    return starts


def test_sequence_label_reader_labels_each_words_first_piece_as_transformers(kind, model_dir, hf, tmp_path):
    sentences = conll_sentences(300, split="valid.txt")
    tags = [["O" if i % 3 else "B-X" for i in range(len(s))] for s in sentences]
    path = tmp_path / "tags.tsv"
    path.write_text("text_a\tlabel\n" + "".join("\x02".join(w) + "\t" + "\x02".join(t) + "\n"
                                                for w, t in zip(sentences, tags)), encoding="utf-8")
    reader = palm.reader.SequenceLabelReader(model_dir, 256, ["B-X", "O"], tokenizer="auto", phase="train", seed=0)
    reader.load_data(str(path), batch_size=len(sentences), shuffle_train=False)
    batch = next(iter(reader))
    byte_level = kind == "bytelevel"
    for i, words in enumerate(sentences):
        if byte_level:
            # HF's is_split_into_words drops the space before every word of a byte-level BPE without a prefix
            # space; the reference is the sentence as running text, words located by character offsets
            text = " ".join(words)
            enc = hf(text, return_offsets_mapping=True)
            word_chars = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
            starts = [next(p for p, (a, e) in enumerate(enc["offset_mapping"]) if e > a and a >= c - (k > 0))
                      for k, c in enumerate(word_chars)]
        else:
            enc = hf(words, is_split_into_words=True)
            starts = word_starts_of(enc)
        n = len(enc["input_ids"])
        assert batch["token_ids"][i, :n].tolist() == enc["input_ids"], words
        assert batch["word_starts"][i, :len(words)].tolist() == starts, words
        assert batch["label_ids"][i, :len(words)].tolist() == [0 if t == "B-X" else 1 for t in tags[i]]


def test_mrc_reader_maps_squad_answers_through_offsets(kind, model_dir, hf, tmp_path):
    questions = squad_questions(120)
    records = [{"id": q["id"], "question": q["question"], "context": q["context"],
                "answers": {"text": [q["answer"]], "answer_start": [q["answer_start"]]}} for q in questions]
    path = tmp_path / "squad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    reader = palm.reader.MRCReader(model_dir, 512, 64, 128, tokenizer="auto", seed=0)
    reader.load_data(str(path), batch_size=4)
    assert len(reader.features) == len(questions)  # one window each: SQuAD contexts fit 512
    n_exact = 0
    for f, ex in zip(reader.features, reader.examples, strict=True):
        enc = hf(ex.question_text, ex.context, return_offsets_mapping=True)
        assert f.token_ids.tolist() == enc["input_ids"]
        # the first context token holding the answer's first character, the last holding its last one
        # (transformers' char_to_token gives the first token for both: XLM-R's lone "▁" before "49" claims the
        # "4" too, so its end would be the "▁")
        holding = [[p for p, ((a, b), s) in enumerate(zip(enc["offset_mapping"], enc.sequence_ids()))
                    if s == 1 and a <= c < b] for c in (ex.start_char, ex.end_char - 1)]
        assert (f.start_position, f.end_position) == (holding[0][0], holding[1][-1])
        # what the MRC head cuts out for the gold (start, end): the answer, with no space before it ("▁word",
        # "Ġword" start at the space), and more only where a piece runs past the answer ("12" for "2")
        lo = f.token_offsets[f.start_position - f.doc_offset][0]
        hi = f.token_offsets[f.end_position - f.doc_offset][1]
        cut = ex.context[lo:hi]
        assert ex.orig_answer_text in cut and cut == cut.strip(), (cut, ex.orig_answer_text)
        n_exact += cut == ex.orig_answer_text
    assert n_exact > 0.9 * len(questions)

    # windows with a stride: each is a slice of the document's encoding inside the model's pair template
    reader = palm.reader.MRCReader(model_dir, 96, 24, 32, tokenizer="auto", phase="predict")
    reader.load_data(str(path), batch_size=4)
    assert len(reader.features) > 2 * len(questions)
    for f in reader.features[:200]:
        ex = reader.examples[f.example_index]
        q_ids = hf(ex.question_text, add_special_tokens=False)["input_ids"][:24]
        doc_ids = hf(ex.context, add_special_tokens=False)["input_ids"]
        window = doc_ids[f.doc_start:f.doc_start + f.num_doc_tokens]
        assert len(f.token_ids) <= 96
        assert f.token_ids.tolist() == with_template(hf, ex.question_text, (0, len(q_ids)), ex.context,
                                                     (f.doc_start, f.doc_start + f.num_doc_tokens))
        assert f.token_ids[f.doc_offset:f.doc_offset + f.num_doc_tokens].tolist() == window


def test_mask_lm_reader_masks_the_models_mask_token_and_whole_words(kind, model_dir, hf, tmp_path):
    texts = sst2_sentences(64, start=50000)
    path = write_table(tmp_path / "mlm.tsv", ["text_a"], [[t] for t in texts])
    reader = palm.reader.MaskLMReader(model_dir, 64, tokenizer="auto", seed=3, whole_word_mask=True, mask_prob=0.3)
    reader.load_data(path, batch_size=len(texts), shuffle_train=False)
    for name in ("token_ids", "input_mask"):
        reader.require_attr(name)
    batch = next(iter(reader))
    original = hf(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(batch["input_mask"], original["attention_mask"])
    ids, pos = batch["token_ids"].reshape(-1), batch["mask_pos"]
    assert torch.equal(batch["mask_label"], original["input_ids"].reshape(-1)[pos])
    assert (ids[pos] == hf.mask_token_id).float().mean() > 0.6  # 80% become the model's own mask token
    assert not set(original["input_ids"].reshape(-1)[pos].tolist()) & set(hf.all_special_ids)
    # whole words: a selected token's word (transformers' word ids) is selected whole, but for unknown pieces
    selected, unknown = set(pos.tolist()), hf.unk_token_id
    width = original["input_ids"].shape[1]
    n_words = 0
    for row in range(len(texts)):
        words, row_ids = original.word_ids(row), original["input_ids"][row].tolist()
        for word in {w for w in words if w is not None}:
            flat = {row * width + p for p, w in enumerate(words) if w == word and row_ids[p] != unknown}
            assert not (flat & selected) or flat <= selected, (texts[row], word)
            n_words += len(flat) > 1 and flat <= selected
    assert n_words > 10  # words of several pieces were masked


def test_tokenizer_json_beside_vocab_txt_and_folder_rules(tmp_path):
    model_dir = MAKERS["wordpiece"](str(tmp_path / "wp"))
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda item: item[1])
    (tmp_path / "wp" / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    # PALM's default path stays the fast WordPiece for a folder with vocab.txt; 'auto' reads the tokenizer.json
    assert type(load_tokenizer("wordpiece", model_dir)) is WordPieceTokenizer
    auto = load_tokenizer("auto", model_dir)
    assert type(auto) is HFTokenizer and auto.vocab_path.endswith("tokenizer.json")
    texts = sst2_sentences(500)
    assert auto.encode_batch(texts) == load_tokenizer("wordpiece", model_dir, do_lower_case=True).encode_batch(texts)
    # the file itself, even under PALM's default name, is read as what it is
    assert type(load_tokenizer("wordpiece", os.path.join(model_dir, "tokenizer.json"))) is HFTokenizer
    os.remove(tmp_path / "wp" / "tokenizer.json")
    assert type(load_tokenizer("auto", model_dir)) is WordPieceTokenizer
    with pytest.raises(FileNotFoundError, match=r"empty: no tokenizer files \(looked for tokenizer.json, "):
        os.mkdir(tmp_path / "empty")
        load_tokenizer("auto", tmp_path / "empty")


def test_export_rebuilds_a_reader_with_the_same_ids(kind, model_dir, tmp_path):
    texts = sst2_sentences(50, start=61000)
    path = write_table(tmp_path / "pairs.tsv", ["label", "text_a", "text_b"],
                       [["1", a, b] for a, b in zip(texts[::2], texts[1::2])])
    reader = palm.reader.ClassifyReader(model_dir, 48, tokenizer="auto", phase="predict")
    spec = reader.export(tmp_path / "bundle")  # what palm.export writes for the Predictor
    files = {arg: os.path.join(tmp_path / "bundle", rel) for arg, rel in spec["files"].items()}
    assert spec["options"]["tokenizer"] == "auto" and os.path.basename(files["vocab_path"]) == "tokenizer.json"
    rebuilt = palm.reader.ClassifyReader(**files, **spec["options"], phase="predict")
    for r in (reader, rebuilt):
        r.load_data(path, batch_size=25)
    assert torch.equal(next(iter(reader))["token_ids"], next(iter(rebuilt))["token_ids"])
    assert (rebuilt.tokenizer.pad_id, rebuilt.tokenizer.mask_id) == (reader.tokenizer.pad_id,
                                                                      reader.tokenizer.mask_id)


def test_sentencepiece_model_is_converted_once_and_cached(tmp_path, monkeypatch):
    pytest.importorskip("sentencepiece")
    model_dir = MAKERS["xlmr-spm"](str(tmp_path / "xlmr"))
    monkeypatch.setenv("TORCHPALM_CACHE", str(tmp_path / "cache"))
    calls = []
    real = transformers.AutoTokenizer.from_pretrained

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counting)
    texts = sst2_sentences(200, start=62000)
    first = load_tokenizer("auto", model_dir).encode_batch(texts)
    second = load_tokenizer("auto", model_dir).encode_batch(texts)
    assert len(calls) == 1 and first == second
    assert os.listdir(tmp_path / "cache" / "tokenizers")  # kept there
    # another SentencePiece model (or another tokenizer_config.json) is another conversion
    with open(os.path.join(model_dir, "tokenizer_config.json"), "a", encoding="utf-8") as f:
        f.write("\n")
    load_tokenizer("auto", model_dir)
    assert len(calls) == 2


def test_sentencepiece_without_its_packages_and_bad_files_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "spm.model").write_bytes(b"\x00not a model")
    monkeypatch.setitem(__import__("sys").modules, "sentencepiece", None)  # not installed
    with pytest.raises(ImportError, match=r"spm/spm\.model: this model ships only a SentencePiece model; .* \(pip "
                                          r"install 'torchpalm\[sentencepiece\]'"):
        palm.reader.ClassifyReader(tmp_path / "spm", 32)
    model_dir = MAKERS["unigram"](str(tmp_path / "uni"))
    spec = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    spec["post_processor"]["pair"] = spec["post_processor"]["pair"][::-1]  # b before a: no reader layout for it
    json.dump(spec, open(os.path.join(model_dir, "tokenizer.json"), "w", encoding="utf-8"))
    with pytest.raises(ValueError, match=r"uni/tokenizer\.json: post-processor TemplateProcessing: the pair template "
                                         r"must hold \$A then \$B once each"):
        load_tokenizer("auto", model_dir)
    spec["post_processor"]["pair"] = spec["post_processor"]["pair"][::-1]
    json.dump(spec, open(os.path.join(model_dir, "tokenizer.json"), "w", encoding="utf-8"))
    json.dump({"mask_token": "<nope>"}, open(os.path.join(model_dir, "tokenizer_config.json"), "w"))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: mask_token '<nope>' is not in the vocabulary"):
        load_tokenizer("auto", model_dir)
    (tmp_path / "uni" / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"uni/tokenizer\.json: not a tokenizer\.json the `tokenizers` library"):
        load_tokenizer("auto", model_dir)


def test_templates_of_every_post_processor_equal_the_rust_post_processing():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from torchpalm.input_template import InputTemplate

    vocab = {t: i for i, t in enumerate(["<s>", "</s>", "[CLS]", "[SEP]", "a", "b", "c", "d", "e", "<unk>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] [SEP] $B:1 [SEP]:1",
                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    for post in (None, processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2)),
                 processors.RobertaProcessing(("</s>", 1), ("<s>", 0)), template,
                 processors.Sequence([processors.ByteLevel(trim_offsets=True), template])):
        tok.post_processor = post
        ours = InputTemplate.from_post_processor(json.loads(tok.to_str())["post_processor"], "t.json")
        for a, b in (("a b c", None), ("a b", "c d e"), ("", "d")):
            expected = tok.encode(a, b)
            ids_a, ids_b = tok.encode(a, add_special_tokens=False).ids, b and tok.encode(b, add_special_tokens=False).ids
            ids, segments = ours.build(ids_a, ids_b, 100)
            assert (ids.tolist(), segments.tolist()) == (expected.ids, expected.type_ids), (post, a, b)


@pytest.mark.parametrize("family", ["modernbert", "deberta-v2", "hf-electra"])
def test_every_backbone_refuses_a_tokenizer_json_larger_than_its_embeddings(family, tmp_path):
    model_dir = MAKERS["bytelevel"](str(tmp_path / "other"))  # 3000 ids
    tiny = {"vocab_size": 1500, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 48, "max_position_embeddings": 64}
    if family == "modernbert":
        backbone = palm.backbone.ModernBERT.from_config(transformers.ModernBertConfig(**tiny).to_dict())
    elif family == "deberta-v2":
        backbone = palm.backbone.DeBERTaV2.from_config(transformers.DebertaV2Config(**tiny).to_dict())
    else:
        backbone = palm.backbone.HFEncoder(transformers.ElectraConfig(**tiny, embedding_size=32).to_dict())
    reader = palm.reader.ClassifyReader(model_dir, 32)  # the folder's tokenizer.json
    with pytest.raises(ValueError, match=r"other/tokenizer\.json has 3000 ids but the (backbone's 'vocab_size' is|"
                                         r"model embeds) 1500"):
        reader.register_with(backbone)


def test_a_word_the_tokenizer_drops_gets_the_unknown_token_or_a_clear_error(tmp_path):
    model_dir = MAKERS["unigram"](str(tmp_path / "uni"))  # WhitespaceSplit drops a word that is a space
    path = tmp_path / "tags.tsv"
    path.write_text("text_a\tlabel\nEU\x02\u3000\x02rejects\tB\x02O\x02O\n", encoding="utf-8")
    reader = palm.reader.SequenceLabelReader(model_dir, 32, ["B", "O"], seed=0)
    reader.load_data(str(path), batch_size=1)
    example = reader.examples[0]
    assert example["token_ids"][example["word_starts"][1]] == reader.tokenizer.unk_id
    assert len(example["word_starts"]) == 3
    spec = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    spec["model"]["unk_id"] = None  # a tokenizer without an unknown token (none by that name either)
    spec["model"]["vocab"][3][0] = "[RESERVED]"
    spec["added_tokens"] = [{**t, "content": "[RESERVED]"} if t["id"] == 3 else t for t in spec["added_tokens"]]
    json.dump(spec, open(os.path.join(model_dir, "tokenizer.json"), "w", encoding="utf-8"))
    os.remove(os.path.join(model_dir, "tokenizer_config.json"))
    os.remove(os.path.join(model_dir, "special_tokens_map.json"))
    reader = palm.reader.SequenceLabelReader(model_dir, 32, ["B", "O"], seed=0)
    with pytest.raises(palm.reader.DataError, match=r"tags\.tsv: the word '\\u3000' encodes to no token and the "
                                                     r"tokenizer \(.*uni/tokenizer\.json\) has no unknown token"):
        reader.load_data(str(path), batch_size=1)
