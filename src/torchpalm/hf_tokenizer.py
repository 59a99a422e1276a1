"""The model's own tokenizer: a Hugging Face `tokenizer.json` (WordPiece, byte-level BPE, Unigram / Metaspace...).

`HFTokenizer` runs the whole pipeline the file describes (normalizer, pre-tokenizer, model) in the `tokenizers`
library (Rust), and takes the special tokens and the single / pair layout from its post-processor
(`torchpalm.input_template`), with the token names (`mask_token`, `pad_token`, ...) of the `tokenizer_config.json`
(or `special_tokens_map.json`) beside it. Ids equal `transformers.AutoTokenizer`'s on the same folder.

Models that ship only a SentencePiece model (`sentencepiece.bpe.model` of XLM-R, `spm.model` of DeBERTa-v3) are
converted once, by the converter of `transformers` (which needs the `sentencepiece` package), into a
`tokenizer.json` kept in the tokenizer cache (`$TORCHPALM_CACHE/tokenizers`, else
`~/.cache/torchpalm/tokenizers`), keyed by the files' contents; later runs read the cached file.

`ByteLevelBPETokenizer` is RoBERTa's byte-level BPE (`tokenizer='bpe'`), from its `tokenizer.json` or from
`vocab.json` + `merges.txt`, assembled as `transformers.RobertaTokenizer` does it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import ByteLevel

from .input_template import InputTemplate
from .permissions import follow_umask

logger = logging.getLogger("torchpalm")

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "spm.model", "tokenizer.model")
# the files that name the special tokens, in the order their names are taken
SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")
ROLES = ("cls", "sep", "pad", "unk", "mask")
DEFAULT_NAMES = {"pad": ("[PAD]", "<pad>"), "mask": ("[MASK]", "<mask>"), "unk": ("[UNK]", "<unk>")}


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def special_token_names(directory: str) -> tuple[dict[str, str], str | None]:
    """({role: token} for the roles of `ROLES` named in the folder's tokenizer_config.json and
    special_tokens_map.json, the first file that named any); a name may be a string or `{"content": ...}`."""
    names: dict[str, str] = {}
    source = None
    for file in SPECIAL_TOKEN_FILES:
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
            continue
        config = _read_json(path)
        for role in ROLES:
            value = config.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and role not in names:
                names[role] = value
                source = source or path
    return names, source


def _pre_tokenizers(spec: dict | None) -> list[dict]:
    if not spec:
        return []
    return [p for s in spec.get("pretokenizers", []) for p in _pre_tokenizers(s)] if spec["type"] == "Sequence" \
        else [spec]


def word_prefix_of(pre_tokenizer: dict | None) -> str:
    """What a word that is not its sentence's first carries before it when encoded on its own, so that it encodes
    as in running text: a space where the pre-tokenizer keeps spaces in the pieces without adding one itself
    (byte-level BPE without `add_prefix_space`: "Ġword"; Metaspace that never prepends "▁"), else nothing."""
    for p in _pre_tokenizers(pre_tokenizer):
        if p["type"] == "ByteLevel" and not p.get("add_prefix_space", False):
            return " "
        if p["type"] == "Metaspace" and p.get("prepend_scheme", "always") == "never":
            return " "
    return ""


class HFTokenizer:
    """A Hugging Face `tokenizer.json` with its special tokens, offering the readers' tokenizer surface.

    Args:
        path: a `tokenizer.json`, or the model folder holding it (token names come from the
            `tokenizer_config.json` / `special_tokens_map.json` beside it).
        do_lower_case: lower-case the text before the file's own normalizer (off by default: the file decides).
        source: what messages name as this tokenizer's file (`vocab_path`), when not `path` itself (the
            SentencePiece model a cached tokenizer.json was converted from).

    Attributes:
        template: the single / pair layout of the post-processor (`InputTemplate`).
        cls_id, sep_id, pad_id, unk_id, mask_id: the ids of those roles (None where the model has none; cls and
            sep default to the template's first and last special token).
        special_ids: every id that is not a piece of text (added special tokens and the roles above).
        word_prefix: see `word_prefix_of`.
    """

    def __init__(self, path: str | os.PathLike, do_lower_case: bool = False, source: str | None = None):
        path = os.fspath(path)
        file = os.path.join(path, TOKENIZER_JSON) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        try:
            tok = Tokenizer.from_file(file)  # JSON only: nothing in it can run code
        except Exception as e:  # the Rust side raises a bare Exception for a malformed file
            raise ValueError(f"{file}: not a tokenizer.json the `tokenizers` library can read: {e}") from None
        names, names_source = special_token_names(os.path.dirname(file) or ".")
        self._setup(tok, source or file, names, names_source or file, do_lower_case)

    def _setup(self, tok: Tokenizer, where: str, names: dict[str, str], names_source: str,
               do_lower_case: bool) -> None:
        self.vocab_path = where
        self._source_json = tok.to_str()  # what `save` writes: the file as given (no lower-casing added)
        spec = json.loads(self._source_json)
        tok.no_truncation()  # the readers truncate (pairs longest-first, MRC windows)
        tok.no_padding()
        self.template = InputTemplate.from_post_processor(spec.get("post_processor"), where)
        self.vocab = tok.get_vocab(with_added_tokens=True)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self._names = dict(names)
        for role, token in names.items():
            if token not in self.vocab:
                raise ValueError(f"{names_source}: {role}_token {token!r} is not in the vocabulary of {where}")
        model = spec.get("model") or {}
        if "unk" not in names:  # the model's own unknown token
            unk = model.get("unk_token")
            if isinstance(model.get("unk_id"), int):  # Unigram names it by id
                unk = self.inv_vocab.get(model["unk_id"])
            if unk in self.vocab:
                self._names["unk"] = unk
        padding = spec.get("padding") or {}
        if "pad" not in names and padding.get("pad_token") in self.vocab:
            self._names["pad"] = padding["pad_token"]
        for role, candidates in DEFAULT_NAMES.items():
            if role not in self._names:
                found = [t for t in candidates if t in self.vocab]
                if found:
                    self._names[role] = found[0]
        template_specials = [t for t, _ in self.template.single if t >= 0]
        self.cls_id, self.sep_id, self.pad_id, self.unk_id, self.mask_id = (
            self.vocab.get(self._names.get(role)) for role in ROLES)
        if self.cls_id is None and template_specials:
            self.cls_id = template_specials[0]
        if self.sep_id is None and template_specials:
            self.sep_id = template_specials[-1]
        if self.pad_id is None:
            raise ValueError(f"{where}: no padding token: name it (pad_token) in a tokenizer_config.json beside "
                             f"the file, or give the vocabulary a [PAD] or <pad> token")
        added_special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
        roles = {self.cls_id, self.sep_id, self.pad_id, self.unk_id, self.mask_id} - {None}
        self.special_ids = frozenset(added_special | roles | {t for t, _ in self.template.pair if t >= 0})
        self.word_prefix = word_prefix_of(spec.get("pre_tokenizer"))
        if do_lower_case:
            tok.normalizer = (normalizers.Sequence([normalizers.Lowercase(), tok.normalizer])
                              if tok.normalizer is not None else normalizers.Lowercase())
        self.do_lower_case = do_lower_case
        self._tok = tok

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (the rows an embedding table needs)."""
        return max(self.vocab.values()) + 1

    @property
    def kind(self) -> str:
        """The readers' `tokenizer=` name that rebuilds this tokenizer from its saved files."""
        return "auto"

    @property
    def pair_separators(self) -> int:
        """Special tokens between a and b in a pair (1: `[SEP]`, 2: RoBERTa's `</s></s>`)."""
        a, b = self.template.pair_offsets(0)
        return b - a

    # ---- encoding (no special tokens; the template adds them) ----
    def tokenize(self, text: str) -> list[str]:
        """The pieces of one text, e.g. ["▁Hello", "▁world"]."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """Ids of each word of ONE sentence as it reads in running text: the first bare, the others after
        `word_prefix`."""
        return self.encode_batch([w if i == 0 else self.word_prefix + w for i, w in enumerate(words)])

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids `[n]`, character spans `[n, 2]` in the original text) of each text."""
        return [(np.asarray(e.ids, dtype=np.int64), np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2))
                for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_word_starts(self, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray]]:
        """(ids, bool `[n]`: the piece begins a word) of each text, a word being what the pre-tokenizer split off
        (its `word_ids`), for whole-word masking."""
        out = []
        for e in self._tok.encode_batch(list(texts), add_special_tokens=False):
            words = np.asarray([-1 if w is None else w for w in e.word_ids], dtype=np.int64)
            starts = np.ones(len(words), dtype=bool)
            starts[1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
            out.append((e.ids, starts))
        return out

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.inv_vocab.get(int(i), "") for i in ids]

    def build_inputs(self, ids_a: Sequence[int], ids_b: Sequence[int] | None, max_len: int):
        """The model's single or pair sequence, truncated to `max_len`: (token ids, segment ids)."""
        return self.template.build(ids_a, ids_b, max_len)

    def save(self, directory: str | os.PathLike) -> dict[str, str]:
        """Writes `tokenizer.json` and a `tokenizer_config.json` naming its special tokens into `directory` (an
        inference bundle); returns the reader arguments naming them (`{"vocab_path": "tokenizer.json"}`)."""
        with open(os.path.join(directory, TOKENIZER_JSON), "w", encoding="utf-8") as f:
            f.write(self._source_json)
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({f"{role}_token": self._names[role] for role in ROLES if role in self._names}, f, indent=1)
        return {"vocab_path": TOKENIZER_JSON}


BPE_SPECIALS = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>", "mask": "<mask>"}


def _bpe_files(path: str) -> tuple[str | None, str | None, str | None]:
    """(tokenizer.json, vocab.json, merges.txt) that `path` (a model directory or one of those files) names."""
    if os.path.isdir(path):
        tokenizer_json = os.path.join(path, TOKENIZER_JSON)
        if os.path.isfile(tokenizer_json):
            return tokenizer_json, None, None
        return None, os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if path.endswith(".json") and os.path.basename(path) != "vocab.json":
        return path, None, None
    return None, path, os.path.join(os.path.dirname(path), "merges.txt")


class ByteLevelBPETokenizer(HFTokenizer):
    """RoBERTa's (GPT-2's) byte-level BPE, as `transformers.RobertaTokenizer` builds it.

    Args:
        path: a model directory holding `tokenizer.json`, or `vocab.json` and `merges.txt`; or the path of
            `tokenizer.json`, or of `vocab.json` (with `merges.txt` beside it).
        do_lower_case: lower-case the text first (RoBERTa is cased; off by default).

    Special tokens are RoBERTa's: `<s>` (cls), `</s>` (sep), `<pad>`, `<unk>`, `<mask>`. A word that is not the
    first of its sentence is encoded with a leading space (`word_prefix`), as it appears in running text
    ("Ġword"); pairs are `<s> a </s></s> b </s>` (a `tokenizer.json`'s own post-processor decides there).
    """

    def __init__(self, path: str | os.PathLike, do_lower_case: bool = False):
        path = os.fspath(path)
        tokenizer_json, vocab_json, merges_txt = _bpe_files(path)
        if tokenizer_json is not None:
            try:
                tok = Tokenizer.from_file(tokenizer_json)
            except Exception as e:
                raise ValueError(f"{tokenizer_json}: not a tokenizer.json the `tokenizers` library can read: {e}"
                                 ) from None
            where = tokenizer_json
        else:
            for needed in (vocab_json, merges_txt):
                if not os.path.isfile(needed):
                    raise FileNotFoundError(f"byte-level BPE file not found: {needed} (tokenizer='bpe' needs "
                                            f"tokenizer.json, or vocab.json and merges.txt, in {path})")
            # The same model, pre-tokenizer and decoder as transformers.RobertaTokenizer (no unk: every byte is
            # a symbol of a real byte-level vocabulary). The Rust code raises a bare Exception on a bad file, e.g.
            # a merge whose result the vocabulary lacks (HF's RobertaTokenizer refuses those files too).
            try:
                vocab, merges = BPE.read_file(vocab_json, merges_txt)
                tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                    end_of_word_suffix="", fuse_unk=False))
            except Exception as e:
                raise ValueError(f"{vocab_json} + {merges_txt}: not a usable BPE vocabulary and merges pair: {e}"
                                 ) from None
            tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            where = vocab_json
        vocab = tok.get_vocab(with_added_tokens=True)
        missing = [t for t in BPE_SPECIALS.values() if t not in vocab]
        if missing:
            raise ValueError(f"{where}: the vocabulary lacks RoBERTa's special tokens {missing}")
        tok.add_special_tokens([AddedToken(t, normalized=False) for t in BPE_SPECIALS.values()])
        if tokenizer_json is None or tok.post_processor is None:
            # RoBERTa's `<s> a </s></s> b </s>`; character offsets without the leading space of "Ġword"
            tok.post_processor = processors.RobertaProcessing((BPE_SPECIALS["sep"], vocab[BPE_SPECIALS["sep"]]),
                                                              (BPE_SPECIALS["cls"], vocab[BPE_SPECIALS["cls"]]),
                                                              trim_offsets=True, add_prefix_space=False)
        names = {role: BPE_SPECIALS[role] for role in ROLES}
        self._setup(tok, where, names, where, do_lower_case)

    @property
    def kind(self) -> str:
        return "bpe"


# ---- SentencePiece models: converted once to tokenizer.json ----
def tokenizer_cache_dir() -> str | None:
    """Where converted tokenizers are kept: `$TORCHPALM_CACHE/tokenizers`, else
    `$XDG_CACHE_HOME/torchpalm/tokenizers` (`~/.cache/...`); None when `$TORCHPALM_CACHE` switches caching off."""
    env = os.environ.get("TORCHPALM_CACHE")
    if env is not None and env.strip().lower() in ("off", "0", "false", "no", ""):
        return None
    if env:
        return os.path.join(env, "tokenizers")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torchpalm", "tokenizers")


def _conversion_key(model_file: str) -> str:
    """A digest of everything the conversion reads: the SentencePiece model, the folder's tokenizer and model
    configs, and the converter's version."""
    import transformers

    digest = hashlib.sha256(transformers.__version__.encode())
    directory = os.path.dirname(model_file)
    for path in (model_file, *(os.path.join(directory, f) for f in (*SPECIAL_TOKEN_FILES, "config.json"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def sentencepiece_converted(model_file: str | os.PathLike) -> Iterator[str]:
    """Yields the folder of a `tokenizer.json` (with its `tokenizer_config.json`) converted from a model folder
    that ships only a SentencePiece model, by `transformers.AutoTokenizer` (the model's own tokenizer class,
    which the folder's tokenizer_config.json or config.json names). The folder is in the tokenizer cache, so the
    conversion runs once; with the cache off it is a temporary folder, removed on exit.

    Raises:
        ImportError: naming the file when `transformers` or `sentencepiece` is missing.
        ValueError: naming the folder when transformers cannot build a tokenizer from it.
    """
    model_file = os.fspath(model_file)
    directory = os.path.dirname(os.path.abspath(model_file))
    try:
        import sentencepiece  # noqa: F401  (transformers' converter reads the model with it)
        import transformers
    except ImportError:
        raise ImportError(f"{model_file}: this model ships only a SentencePiece model; reading it needs "
                          f"transformers and sentencepiece (pip install 'torchpalm[sentencepiece]'), or a "
                          f"tokenizer.json beside it (AutoTokenizer.from_pretrained(folder).save_pretrained(folder) "
                          f"where transformers is installed)") from None
    cache_root = tokenizer_cache_dir()
    target = os.path.join(cache_root, _conversion_key(model_file)) if cache_root is not None else None
    if target is not None and os.path.isfile(os.path.join(target, TOKENIZER_JSON)):
        yield target
        return
    logger.info("%s: converting the SentencePiece model to tokenizer.json%s", model_file,
                f" (once: kept in {target})" if target else "")
    try:
        hf = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{directory}: transformers cannot build a tokenizer from {os.path.basename(model_file)} "
                         f"({e}); name its class in tokenizer_config.json (\"tokenizer_class\", e.g. "
                         f"\"XLMRobertaTokenizer\", \"DebertaV2Tokenizer\")") from None
    if not hasattr(hf, "backend_tokenizer"):
        raise ValueError(f"{directory}: transformers built a {type(hf).__name__}, which has no tokenizer.json form")
    if target is None:
        with tempfile.TemporaryDirectory(prefix="torchpalm-tokenizer-") as out:
            hf.save_pretrained(out)
            yield out
        return
    os.makedirs(cache_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".converting-", dir=cache_root)
    try:
        hf.save_pretrained(staging)
        follow_umask(staging)  # mkdtemp made it private; the cache is shared like any other file
        try:
            os.replace(staging, target)  # atomic: a concurrent run either finds the whole folder or converts too
        except OSError:  # another process got there first
            if not os.path.isfile(os.path.join(target, TOKENIZER_JSON)):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    yield target


def find_tokenizer(path: str | os.PathLike) -> tuple[str, str]:
    """What `tokenizer='auto'` reads at `path`: ('hf', tokenizer.json), ('sentencepiece', the .model file),
    ('wordpiece', vocab.txt) or ('bpe', vocab.json); a folder is searched in that order.

    Raises:
        FileNotFoundError: naming the folder and the files looked for.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        name = os.path.basename(path)
        if name == "vocab.json":
            return "bpe", path
        if name.endswith(".json"):
            return "hf", path
        if name.endswith(".model"):
            return "sentencepiece", path
        return "wordpiece", path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer not found: {path} is neither a file nor a folder")
    candidates = [("hf", TOKENIZER_JSON), *[("sentencepiece", f) for f in SENTENCEPIECE_FILES],
                  ("wordpiece", "vocab.txt"), ("bpe", "vocab.json")]
    for kind, name in candidates:
        if os.path.isfile(os.path.join(path, name)):
            return kind, os.path.join(path, name)
    raise FileNotFoundError(f"{path}: no tokenizer files (looked for {', '.join(n for _, n in candidates)})")
