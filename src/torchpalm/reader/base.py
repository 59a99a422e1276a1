"""The Reader base class: PALM's register protocol, one-time encoding, and resumable, shardable batching.

A reader turns a file into a list of encoded examples ONCE (`load_data`), then yields padded batches, each a
`dict[str, torch.Tensor]` (layout in `torchpalm.reader.collate`). Everything that decides the next batch is a
function of `(seed, epoch, position)`: the shuffle order of epoch e comes from `default_rng([seed, e])` and any
per-batch randomness (masking) from `default_rng([seed, e, position])`, so `state_dict()` is three integers and
resuming is exact.

The pieces readers share live in their own modules: file parsing in `parsing`, label maps in `labels`, padding
in `collate`, the encoded-data cache in `cache`, batch plans in `batching`. Their public names are re-exported
here, so `from torchpalm.reader.base import read_tsv` (and the like) keeps working.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .. import distributed
from ..limits import short_repr
from ..tokenizer import HFTokenizer, WordPieceTokenizer, load_tokenizer
from . import batching, cache
from .collate import COMMON_OUTPUTS, collate_common, pad_2d
from .labels import load_label_map, preview
from .parsing import (
    COLUMN_ALIASES,
    EXTENSION_FORMATS,
    QUESTION_CONTEXTS,
    TABLE_FORMATS,
    DataError,
    canonical_columns,
    json_array_objects,
    json_lines_objects,
    parquet_class_names,
    read_json_objects,
    read_lines,
    read_parquet_objects,
    read_table,
    read_tsv,
    table_format,
    unquote_csv_style,
    write_first_examples,
)

__all__ = [
    "COLUMN_ALIASES", "COMMON_OUTPUTS", "EXTENSION_FORMATS", "QUESTION_CONTEXTS", "TABLE_FORMATS", "DataError",
    "Reader", "canonical_columns", "collate_common", "json_array_objects", "json_lines_objects", "load_label_map",
    "pad_2d", "parquet_class_names", "preview", "read_json_objects", "read_lines", "read_parquet_objects",
    "read_table", "read_tsv", "table_format", "unquote_csv_style", "write_first_examples",
]

logger = logging.getLogger("torchpalm")


class Reader:
    """Base reader: PALM's register protocol, `load_data`, and resumable, shardable batch iteration.

    A reader of your own subclasses this and implements three hooks (the built-in readers are examples):

    * `_task_outputs() -> {name: (shape, dtype)}`: the fields of its own that batches carry (labels, ...);
      they may depend on `self.phase` (no labels in 'predict'). The backbone's inputs come on top
      (`register_with`), and heads name what they read in `inputs_attrs["reader"]`.
    * `_load_examples(path) -> list[dict]`: parses and encodes the whole file ONCE, one dict per example
      (e.g. `token_ids` as a numpy array and a label). `self._read_rows(path, required, optional)` parses
      TSV/CSV/JSON-lines tables with `load_data`'s format and columns; `self.tokenizer` encodes
      (`encode(text) -> ids`, `cls_id`, `sep_id`, `pad_id`); `self.max_len` bounds the length with [CLS]/[SEP].
      Raise `DataError` naming `path:line` for a bad row.
    * `_collate(examples, rng) -> dict[str, Tensor]`: one batch; `collate_common(token_seqs, segment_seqs,
      pad_id)` builds the backbone inputs (`token_ids`, `position_ids`, `segment_ids`, `input_mask`,
      `task_ids`, each `[batch, seq]` int64). Any randomness draws from `rng` (seeded by epoch and position,
      so resuming is exact).

    Shuffling, batching, epochs, sharding and `state_dict()` are the base class's. Optional, for evaluation
    and prediction: `gold_labels()` (what the default accuracy metric scores against) and
    `get_epoch_outputs()` (what a head's `epoch_postprocess` receives, e.g. `id2label`).

    Encoded-data cache (`torchpalm.reader.cache`): a reader whose class sets `_cache_version` (an integer,
    bumped whenever its encoding changes) and whose examples hold only integers and 1-D arrays has them saved
    on the first `load_data` and reloaded on the next ones; `_encoding_options()` must list every option
    that changes them. `set_cache_dir()` chooses the directory or switches the cache off.

    Args:
        vocab_path: vocabulary file (`vocab.txt`), or the model directory holding the tokenizer files.
        max_len: maximum sequence length including [CLS]/[SEP].
        tokenizer: 'wordpiece' (BERT, ERNIE; `vocab.txt`), 'bpe' (RoBERTa's byte-level BPE: `vocab_path` is
            the model directory with `tokenizer.json` or `vocab.json` + `merges.txt`, or one of those files) or
            'auto': whatever the model ships, `vocab_path` being its folder (its `tokenizer.json` with the special
            tokens and pair template of its post-processor; else its SentencePiece model, converted once; else
            `vocab.txt` or `vocab.json`). Under 'wordpiece' (the default) a folder without `vocab.txt`, or a
            `tokenizer.json` / SentencePiece file, is read as 'auto'.
        lang: 'en'/'english' or 'cn'/'chinese'; Chinese deletes ASCII spaces from text columns (PALM's for_cn).
        seed: seed of this reader's own RNG (shuffling, masking); None draws one from OS entropy.
        do_lower_case: lower-case and strip accents (True for uncased vocabularies).
        phase: 'train' (labels, shuffle, drop last partial batch) or 'predict' (one ordered pass, all rows).
    """

    # the `tokenizer=` names this reader can work with (see torchpalm.tokenizer.load_tokenizer)
    supported_tokenizers: tuple[str, ...] = ("wordpiece", "bpe", "auto")

    def __init__(
        self,
        vocab_path: str | os.PathLike,
        max_len: int,
        tokenizer: str = "wordpiece",
        lang: str = "en",
        seed: int | None = None,
        do_lower_case: bool = False,
        phase: str = "train",
    ):
        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        if lang.lower() not in ("en", "english", "cn", "chinese"):
            raise ValueError(f"lang must be one of 'en', 'english', 'cn', 'chinese', got {lang!r}")
        if tokenizer not in self.supported_tokenizers:
            raise ValueError(f"{type(self).__name__} takes tokenizer= one of {list(self.supported_tokenizers)}, "
                             f"got {tokenizer!r}")
        if max_len < 3:
            raise ValueError(f"max_len must be at least 3 ([CLS] x [SEP]), got {max_len}")
        self._vocab_path = os.fspath(vocab_path)
        self._tokenizer = load_tokenizer(tokenizer, vocab_path, do_lower_case=do_lower_case)
        self._max_len = max_len
        self._lang = lang
        self._for_cn = lang.lower() in ("cn", "chinese")
        self._phase = phase
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._register: set[str] = set(self._task_outputs())
        self._backbone = None
        self._examples: list[dict] | None = None
        self._input_file: str | None = None
        self._table_format: str | None = None
        self._file_columns: tuple[str, ...] | None = None
        self._batch_size: int | None = None
        self._num_epochs: int | None = None
        self._shuffle = True
        self._epoch = 0
        self._position = 0
        self._rank, self._world_size = 0, 1
        self._cache_dir: str | bool | None = None  # None: the environment's choice (cache.default_cache_dir)
        self._vocab_digest: str | None = None
        self.cache_hit: bool | None = None  # whether the last load_data reloaded its examples from the cache
        self._batching: dict | None = None  # set_batching's options; None: PALM's order
        self._token_plan: list[np.ndarray] | None = None  # the fixed token-budget batches, built on first use

    # ---- PALM's register protocol (spec §2.4) ----
    def _task_outputs(self) -> dict[str, tuple]:
        raise NotImplementedError

    def _all_outputs(self) -> dict[str, tuple]:
        return {**COMMON_OUTPUTS, **self._task_outputs()}

    def register_with(self, backbone) -> None:
        """Adds the backbone's inputs to what this reader yields and remembers the backbone.

        A backbone with `check_reader` (BERT, ERNIE) first refuses a `max_len` or vocabulary it cannot embed."""
        if hasattr(backbone, "check_reader"):
            backbone.check_reader(self)
        for name in backbone.inputs_attr:
            self._register.add(name)
        self._backbone = backbone

    def require_attr(self, name: str) -> None:
        self._register.add(name)

    def get_registered_backbone(self):
        return self._backbone

    @property
    def outputs_attr(self) -> dict[str, tuple]:
        available = self._all_outputs()
        unknown = sorted(self._register - set(available))
        if unknown:
            raise NotImplementedError(f"{type(self).__name__} cannot produce {unknown}; it yields {sorted(available)}")
        return {k: available[k] for k in sorted(self._register)}

    def clone(self, phase: str = "train") -> Reader:
        """A copy of this reader for another phase (same vocabulary and data; that phase's outputs)."""
        import copy

        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        new = copy.copy(self)
        new._phase = phase
        new._register = set(new._task_outputs())
        if self._backbone is not None:
            new._register |= set(self._backbone.inputs_attr)
        new.reset()
        return new

    # ---- data ----
    def load_data(
        self,
        input_file: str | os.PathLike,
        batch_size: int,
        num_epochs: int | None = None,
        file_format: str | None = None,
        shuffle_train: bool = True,
        shuffle: bool | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        """Reads, validates and encodes the whole file once.

        Args:
            input_file: the data file.
            batch_size: the global batch size (split across ranks under distributed training).
            num_epochs: train epochs; None means "one epoch" for `Trainer.train` and "forever" for the iterator
                (PALM's convention, used by multi-task sampling).
            file_format: for the table readers (Classify, Match) 'tsv', 'csv' or 'jsonl' (see `read_table`);
                None goes by the file extension. Other readers take their own formats (PALM passed 'tsv' or
                'csv' and ignored it).
            shuffle_train: shuffle every training epoch (`shuffle` is the same switch).
            columns: the column names of a TSV or CSV file that has no header line, e.g.
                `["text_a", "text_b", "label"]`; its first line is then data.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self._phase == "train":  # a predict batch goes whole to one rank (Trainer.predict)
            distributed.check_batch_size(batch_size, f"{type(self).__name__}.load_data({os.fspath(input_file)!r})")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs!r}")
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise ValueError(f"columns must be a list of column names, got {short_repr(columns)}")
        self._input_file = os.fspath(input_file)
        self._batch_size = batch_size
        self._num_epochs = num_epochs
        self._shuffle = shuffle_train if shuffle is None else shuffle
        self._table_format = file_format
        self._file_columns = tuple(columns) if columns is not None else None
        self._examples = self._load_examples_cached(self._input_file)
        self._token_plan = None
        if not self._examples:
            raise DataError(f"{self._input_file}: no examples")
        self._epoch, self._position = 0, 0
        logger.debug("%s: %d examples from %s", type(self).__name__, len(self._examples), self._input_file)

    def load_inputs(self, inputs: Sequence, batch_size: int) -> None:
        """Encodes in-memory inputs (what `palm.Predictor.predict` takes) instead of a file, for one ordered pass.

        What an input is depends on the reader (`_examples_from_inputs`): a text, a (text_a, text_b) pair, a list
        of words, a (question, context) pair.
        """
        if self._phase != "predict":
            raise ValueError(f"{type(self).__name__}: load_inputs is for predict-phase readers")
        if isinstance(inputs, str | bytes | os.PathLike) or not isinstance(inputs, Sequence):
            raise TypeError(f"inputs must be a list (of texts, pairs, ...), got {type(inputs).__name__}")
        if not inputs:
            raise ValueError("inputs is empty: nothing to predict")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self._input_file, self._batch_size, self._num_epochs, self._shuffle = "<inputs>", batch_size, None, False
        self._examples = self._examples_from_inputs(list(inputs))
        self._epoch, self._position = 0, 0

    def _examples_from_inputs(self, inputs: list) -> list[dict]:
        raise NotImplementedError(f"{type(self).__name__} does not take in-memory inputs; pass a file")

    # ---- inference bundles ----
    def export_options(self) -> dict:
        """The constructor arguments (JSON values) that rebuild this reader for prediction, besides the
        tokenizer's files (`export`). Readers of other kinds override this, adding their own options."""
        raise NotImplementedError(f"{type(self).__name__} cannot be exported to an inference bundle: it defines "
                                  f"no export_options()")

    def _base_options(self) -> dict:
        options = {"max_len": self._max_len, "lang": self._lang, "do_lower_case": self._tokenizer.do_lower_case}
        if self._tokenizer.kind != "wordpiece":  # the saved files are a tokenizer.json: say how to read them
            options["tokenizer"] = self._tokenizer.kind
        return options

    def export(self, directory: str | os.PathLike) -> dict:
        """Writes this reader's tokenizer files into `directory`; returns `{"class", "options", "files"}`, what
        `torchpalm.bundle` records to rebuild the reader (files are relative to `directory`)."""
        os.makedirs(directory, exist_ok=True)
        options = self.export_options()
        return {"class": type(self).__name__, "options": options, "files": self._tokenizer.save(directory)}

    def _read_rows(self, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> list:
        """The table rows of `path` in the format and with the columns `load_data` was given."""
        return read_table(path, required, optional, self._table_format, self._file_columns)

    def _load_examples(self, path: str) -> list[dict]:
        raise NotImplementedError

    # ---- encoded-data cache ----
    _cache_version: int | None = None  # None: this reader's examples are never cached

    def set_cache_dir(self, cache_dir: str | os.PathLike | bool | None) -> Reader:
        """Where `load_data` keeps encoded examples: a directory, False to switch the cache off, or None for
        the default (`$TORCHPALM_CACHE`, else `~/.cache/torchpalm/encoded`). Returns the reader."""
        if cache_dir is True:
            cache_dir = None
        if cache_dir is not None and cache_dir is not False and not isinstance(cache_dir, str | os.PathLike):
            raise TypeError(f"cache_dir must be a directory, False or None, got {cache_dir!r}")
        self._cache_dir = os.fspath(cache_dir) if isinstance(cache_dir, str | os.PathLike) else cache_dir
        return self

    @property
    def cache_dir(self) -> str | None:
        """The directory the encoded-data cache uses now; None when it is off (or this reader has none)."""
        # only WordPiece's whole definition is one vocab.txt (hashed into the key); other tokenizers are not cached
        if self._cache_version is None or self._cache_dir is False or type(self._tokenizer) is not WordPieceTokenizer:
            return None
        return self._cache_dir if self._cache_dir is not None else cache.default_cache_dir()

    def _encoding_options(self) -> dict:
        """Everything besides the data file that decides the encoded examples (part of the cache key)."""
        if self._vocab_digest is None:
            self._vocab_digest = cache.file_digest(self._tokenizer.vocab_path)
        cls = type(self)
        return {"reader": f"{cls.__module__}.{cls.__qualname__}", "reader_version": self._cache_version,
                "tokenizer": type(self._tokenizer).__name__, "vocab": self._vocab_digest, "max_len": self._max_len,
                "do_lower_case": self._tokenizer.do_lower_case, "for_cn": self._for_cn, "phase": self._phase,
                "file_format": self._table_format,
                "columns": list(self._file_columns) if self._file_columns is not None else None}

    def _load_examples_cached(self, path: str) -> Sequence[dict]:
        """`_load_examples(path)`, through the encoded-data cache when it is on."""
        self.cache_hit = None
        cache_dir = self.cache_dir
        if cache_dir is None:
            return self._load_examples(path)
        key = cache.cache_key(cache.file_digest(path), self._encoding_options())
        entry = cache.entry_path(cache_dir, type(self).__name__, path, key)
        examples = cache.load_entry(entry, key)
        self.cache_hit = examples is not None
        if examples is not None:
            logger.debug("%s: %d encoded examples reloaded from %s", path, len(examples), entry)
            return examples
        examples = self._load_examples(path)
        try:
            if cache.save_entry(entry, key, examples):
                logger.debug("%s: encoded examples cached in %s", path, entry)
        except OSError as e:  # a read-only or full disk costs the speed-up, never the run
            logger.warning("could not write the encoded-data cache %s (%s); continuing without it", entry, e)
        return examples

    def _collate(self, examples: list[dict], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _text(self, value: str) -> str:
        return value.replace(" ", "") if self._for_cn else value

    @property
    def num_examples(self) -> int:
        return len(self._examples) if self._examples is not None else 0

    @property
    def batch_size(self) -> int | None:
        return self._batch_size

    @property
    def num_epochs(self) -> int | None:
        return self._num_epochs

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def for_cn(self) -> bool:
        """Chinese text (`lang` 'cn' or 'chinese', PALM's for_cn): ASCII spaces are deleted from text columns,
        and an MRC task is scored as CMRC (characters) rather than SQuAD (words)."""
        return self._for_cn

    @property
    def seed(self) -> int:
        """The seed of the shuffled order and every other draw of the reader (given, or drawn when None)."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        # the token-budget batches are fixed by the seed: a plan built under the old one would stay behind
        if int(value) != self._seed:
            self._token_plan = None
        self._seed = int(value)

    @property
    def tokenizer(self) -> WordPieceTokenizer | HFTokenizer:
        return self._tokenizer

    @property
    def examples(self) -> list[dict]:
        """The examples `load_data` encoded (what `_load_examples` returned), in file order."""
        if self._examples is None:
            raise RuntimeError(f"{type(self).__name__}: call load_data() first")
        return self._examples

    @property
    def max_len(self) -> int:
        """The longest sequence, [CLS] and [SEP] included."""
        return self._max_len

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: drop-last in train (but never zero batches), ceil in predict; with a token budget
        (`set_batching(max_tokens=...)`) the number of budget batches, the same every epoch."""
        n, b = self.num_examples, self._batch_size
        if self._phase == "train":
            if self._batching_mode() == "tokens":
                return self._token_steps(len(self._token_batches()))
            return max(n // b, 1)
        return -(-n // b)

    # ---- batching options ----
    def set_batching(
        self,
        group_by_length: bool = False,
        max_tokens: int | None = None,
        token_count: str = "padded",
        max_examples: int | None = None,
        megabatch_factor: int = 50,
    ) -> Reader:
        """Batches that cut padding by changing the data order (train only; off by default: PALM's order).

        Args:
            group_by_length: HuggingFace's `group_by_length`: each epoch, shuffle, sort megabatches of
                `megabatch_factor * batch_size` examples by length, cut them into batches of `batch_size` and
                shuffle the batches. Same batch size and step count as without it.
            max_tokens: token-budget batches instead of `batch_size` examples: at most this many tokens a batch
                (`batch_size` is then unused), the batches fixed for the run and their order shuffled each epoch.
                Sharded over N processes (`shard`), the budget is per process (fairseq's `--max-tokens`): each
                step gives each rank the next of N consecutive batches of the epoch's order, so an epoch has
                len(batches) // N steps and its last len(batches) % N batches (other ones each epoch) wait.
            token_count: what counts against `max_tokens`: 'padded' (rows times the longest row) or 'real'
                (the sum of the lengths, for packed batches).
            max_examples: with `max_tokens`, also at most this many examples a batch.
            megabatch_factor: with `group_by_length`, batches per megabatch.

        Every plan is a function of `(seed, epoch)`, so checkpoints resume exactly; the predict phase keeps the
        file order whatever is set here. Returns the reader. See `torchpalm.reader.batching`.
        """
        if group_by_length and max_tokens is not None:
            raise ValueError("choose group_by_length or max_tokens: token-budget batches are grouped by length "
                             "already")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        if token_count not in batching.TOKEN_COUNTS:
            raise ValueError(f"token_count must be one of {batching.TOKEN_COUNTS}, got {token_count!r}")
        if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
            raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
        if not isinstance(megabatch_factor, int) or megabatch_factor < 1:
            raise ValueError(f"megabatch_factor must be a positive integer, got {megabatch_factor!r}")
        self._batching = None
        if group_by_length:
            self._batching = {"group_by_length": True, "megabatch_factor": megabatch_factor}
        elif max_tokens is not None:
            self._batching = {"max_tokens": max_tokens, "token_count": token_count, "max_examples": max_examples}
        self._token_plan = None
        return self

    @property
    def batching(self) -> dict | None:
        """The options given to `set_batching` (None: PALM's order)."""
        return dict(self._batching) if self._batching is not None else None

    def _batching_mode(self) -> str | None:
        """'length' or 'tokens' when a batching option applies (train phase), else None."""
        if self._batching is None or self._phase != "train":
            return None
        return "length" if self._batching.get("group_by_length") else "tokens"

    def _example_length(self, example) -> int:
        """The token count of an example, for batching by length (readers with two sequences override it)."""
        return len(example["token_ids"] if isinstance(example, dict) else example.token_ids)

    def _lengths(self) -> np.ndarray:
        return np.fromiter((self._example_length(e) for e in self._examples), dtype=np.int64,
                           count=len(self._examples))

    def _token_batches(self) -> list[np.ndarray]:
        if self._examples is None:
            raise RuntimeError(f"{type(self).__name__}: call load_data() before asking for steps or batches")
        if self._token_plan is None:
            # ties in length are broken at random, by the seed only: the batches stay fixed for the run
            tie_rng = np.random.default_rng(np.random.SeedSequence([self._seed], spawn_key=(1,)))
            b = self._batching
            try:
                self._token_plan = batching.token_budget_batches(self._lengths(), b["max_tokens"], b["token_count"],
                                                                 tie_rng, b["max_examples"])
            except ValueError as e:
                raise ValueError(f"{self._input_file}: {e}") from None
        return self._token_plan

    # ---- iteration ----
    def _token_steps(self, n_batches: int) -> int:
        """Steps of an epoch of `n_batches` token-budget batches: one batch per rank a step."""
        if n_batches < self._world_size:
            raise ValueError(f"{self._input_file}: {n_batches} token-budget batches cannot give each of "
                             f"{self._world_size} processes one; lower max_tokens")
        return n_batches // self._world_size

    def shard(self, rank: int, world_size: int) -> None:
        """Makes this reader yield rank `rank`'s part of every global step (for distributed training): its
        slice of each batch of `batch_size` examples, or with token budgets a whole batch of its own."""
        if (self._batching_mode() != "tokens" and self._batch_size is not None
                and self._batch_size % world_size):
            raise ValueError(f"{type(self).__name__} ({self._input_file}): batch_size {self._batch_size} is the "
                             f"global batch and must be divisible by the number of processes ({world_size})")
        self._rank, self._world_size = rank, world_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        n = self.num_examples
        if self._phase == "train" and self._shuffle:
            return np.random.default_rng([self._seed, epoch]).permutation(n)
        return np.arange(n)

    def _batches_of_epoch(self, epoch: int) -> list[np.ndarray]:
        mode = self._batching_mode()
        rng = np.random.default_rng([self._seed, epoch]) if self._shuffle else None
        if mode == "length":
            return batching.length_grouped_batches(self._lengths(), self._batch_size, rng,
                                                   self._batching["megabatch_factor"])
        if mode == "tokens":
            plan = self._token_batches()
            return [plan[i] for i in rng.permutation(len(plan))] if rng is not None else list(plan)
        order, b = self._epoch_order(epoch), self._batch_size
        return [order[i * b : (i + 1) * b] for i in range(self.steps_per_epoch)]

    def _total_epochs(self) -> float:
        if self._phase == "predict":
            return 1
        return self._num_epochs if self._num_epochs is not None else float("inf")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._examples is None:
            raise RuntimeError(f"{type(self).__name__}: call load_data() before iterating")
        while self._epoch < self._total_epochs():
            batches = self._batches_of_epoch(self._epoch)
            by_rank = self._batching_mode() == "tokens"  # token budgets: a whole batch per rank each step
            n_steps = self._token_steps(len(batches)) if by_rank else len(batches)
            while self._position < n_steps:
                if by_rank:
                    indices = batches[self._position * self._world_size + self._rank]
                else:
                    indices = batches[self._position]
                    if self._world_size > 1:
                        per_rank = len(indices) // self._world_size
                        indices = indices[self._rank * per_rank : (self._rank + 1) * per_rank]
                rng = np.random.default_rng([self._seed, self._epoch, self._position])
                self._position += 1
                yield self._select(self._collate([self._examples[i] for i in indices], rng))
            self._epoch += 1
            self._position = 0

    def _select(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keeps only the registered names (spec §2.4)."""
        return {k: v for k, v in batch.items() if k in self._register}

    def reset(self) -> None:
        """Starts iteration again from the first batch of epoch 0."""
        self._epoch, self._position = 0, 0

    def data_options(self) -> dict:
        """The constructor options the training file decided (a label map built from its labels, ...), to build
        predict readers of the same task with: kept in checkpoints (in `state_dict`) and bundles. None here."""
        return {}

    def state_dict(self) -> dict:
        """Everything that decides the next batch (and the batching options, when set, to check on resume), and
        the `data_options()` (for readers built later from the checkpoint)."""
        state = {"seed": self._seed, "epoch": self._epoch, "position": self._position}
        if self._batching is not None:
            state["batching"] = dict(self._batching)
        if self.data_options():
            state["data_options"] = self.data_options()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores `state_dict()`; a position saved under other batching options would point elsewhere, so
        that is an error naming both."""
        if state.get("batching") != self._batching:
            raise ValueError(f"the saved reader position was taken with batching {state.get('batching')} but this "
                             f"reader has {self._batching}; call set_batching(...) as in the saved run")
        if int(state["seed"]) != self._seed:
            self._token_plan = None  # the token-budget batches depend on the seed
        self._seed, self._epoch, self._position = int(state["seed"]), int(state["epoch"]), int(state["position"])
