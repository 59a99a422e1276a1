"""Tokenizers of today's encoders, trained by the tests on a few thousand lines of ../shared/data and saved in the
Hugging Face layout (tokenizer.json + tokenizer_config.json + special_tokens_map.json), nothing downloaded:

* 'unigram': a Unigram with Metaspace ("▁word") and DeBERTa-v3's specials and template ([CLS] a [SEP] b [SEP],
  segments 0 / 1, [MASK] added after the pieces);
* 'bytelevel': a byte-level BPE as ModernBERT's (no prefix space, [CLS] a [SEP] b [SEP]);
* 'wordpiece': BERT's WordPiece with its normalizer and BertProcessing;
* 'xlmr-spm': only a SentencePiece model (`sentencepiece.bpe.model`, a Unigram) as XLM-R ships it, which
  transformers' XLMRobertaTokenizer reads with fairseq's id offset (needs the `sentencepiece` package);
* 'deberta-spm': only DeBERTa-v3's `spm.model` ([PAD] [CLS] [SEP] [UNK] first), which DebertaV2Tokenizer reads,
  adding [MASK] after the pieces.
"""

from __future__ import annotations

import json
import os
import zipfile

from conftest import shared

KINDS = ("unigram", "bytelevel", "wordpiece", "xlmr-spm", "deberta-spm")
NEEDS_SENTENCEPIECE = ("xlmr-spm", "deberta-spm")


def sst2_sentences(n: int = 3000, start: int = 0) -> list[str]:
    with open(shared("sst2", "train.tsv"), encoding="utf-8") as f:
        lines = f.read().split("\n")[1:]
    return [line.split("\t")[0] for line in lines[start:start + n] if line]


def conll_sentences(n: int = 2000, split: str = "train.txt") -> list[list[str]]:
    sentences, words = [], []
    with open(shared("conll2003", split), encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append(words)
                    words = []
                if len(sentences) == n:
                    break
                continue
            words.append(line.split()[0])
    return sentences


def squad_questions(n: int = 300) -> list[dict]:
    """The first `n` questions of SQuAD v1.1 dev: {'id', 'question', 'context', 'answer', 'answer_start'}."""
    with zipfile.ZipFile(shared("squad_v1.1", "dev-v1.1.json.zip")) as zf:
        data = json.loads(zf.read(next(m for m in zf.namelist() if m.endswith(".json"))))
    out = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]
                out.append({"id": qa["id"], "question": qa["question"], "context": paragraph["context"],
                            "answer": answer["text"], "answer_start": answer["answer_start"]})
                if len(out) == n:
                    return out
    return out


def training_text() -> list[str]:
    contexts = list(dict.fromkeys(q["context"] for q in squad_questions(400)))
    return sst2_sentences(3000) + [" ".join(s) for s in conll_sentences(2000)] + contexts


def _write_configs(model_dir: str, specials: dict[str, str], **extra) -> None:
    tokens = {f"{role}_token": token for role, token in specials.items()}
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **tokens, **extra}, f)
    with open(os.path.join(model_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(tokens, f)


def make_unigram(model_dir: str) -> str:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    tok.train_from_iterator(training_text(), trainers.UnigramTrainer(
        vocab_size=3000, special_tokens=specials, unk_token="[UNK]", show_progress=False))
    tok.add_special_tokens(["[MASK]"])  # after the pieces, as DeBERTa-v3's [MASK] (id 128000)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id),
                                                                                   ("[SEP]", sep_id)])
    os.makedirs(model_dir, exist_ok=True)
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    _write_configs(model_dir, {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]",
                               "bos": "[CLS]", "eos": "[SEP]"})
    return model_dir


def make_bytelevel(model_dir: str) -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["|||IP_ADDRESS|||", "<|padding|>", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok.train_from_iterator(training_text(), trainers.BpeTrainer(
        vocab_size=3000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    os.makedirs(model_dir, exist_ok=True)
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    # its padding token is the config's choice, not the [PAD] a reader would guess
    _write_configs(model_dir, {"cls": "[CLS]", "sep": "[SEP]", "pad": "<|padding|>", "unk": "[UNK]",
                               "mask": "[MASK]"}, model_input_names=["input_ids", "attention_mask"])
    return model_dir


def make_wordpiece(model_dir: str) -> str:
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(training_text(), vocab_size=3000, show_progress=False,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    os.makedirs(model_dir, exist_ok=True)
    tok.save(os.path.join(model_dir, "tokenizer.json"))  # BertProcessing post-processor
    _write_configs(model_dir, {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"},
                   do_lower_case=True)
    return model_dir


def make_xlmr_spm(model_dir: str) -> str:
    """XLM-R's layout: `sentencepiece.bpe.model` (a Unigram SentencePiece model) and a tokenizer_config.json
    naming XLMRobertaTokenizer; no tokenizer.json."""
    import sentencepiece

    os.makedirs(model_dir, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_prefix=os.path.join(model_dir, "sentencepiece.bpe"),
        vocab_size=3000, model_type="unigram", minloglevel=2)
    os.remove(os.path.join(model_dir, "sentencepiece.bpe.vocab"))
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512}, f)
    return model_dir


def make_deberta_spm(model_dir: str) -> str:
    """DeBERTa-v3's layout: `spm.model` with [PAD] [CLS] [SEP] [UNK] as ids 0..3, and a tokenizer_config.json
    naming DebertaV2Tokenizer; no tokenizer.json."""
    import sentencepiece

    os.makedirs(model_dir, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_prefix=os.path.join(model_dir, "spm"), vocab_size=3000,
        model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]", minloglevel=2)
    os.remove(os.path.join(model_dir, "spm.vocab"))
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "model_max_length": 512}, f)
    return model_dir


MAKERS = {"unigram": make_unigram, "bytelevel": make_bytelevel, "wordpiece": make_wordpiece,
          "xlmr-spm": make_xlmr_spm, "deberta-spm": make_deberta_spm}
