"""Any encoder `transformers.AutoModel` builds (ELECTRA, DistilBERT, ALBERT, ...), as a torchpalm backbone.

The native backbones (BERT, ERNIE, RoBERTa, DeBERTa-v2) are faster and exportable everywhere; this adapter is
for the architectures they do not cover. It wraps the HF base model unchanged: the weights keep HF's names
(under `model.`), so an HF model directory loads as it is (`trainer.load_pretrain(dir)`) and a torchpalm
checkpoint of it holds `backbone.model.<HF name>`. Building never runs code from the model directory: the config
must name a `model_type` that the installed transformers knows (`trust_remote_code` stays off).
"""

from __future__ import annotations

import inspect
import logging
import os

import torch

from ..state_keys import BACKBONE, scoped
from ..weights import find_weights_file, load_state_file
from .base import Backbone
from .bert import config_source, load_config

logger = logging.getLogger("torchpalm")

INPUTS = {"token_ids": ([-1, -1], "int64"), "input_mask": ([-1, -1], "int64"), "segment_ids": ([-1, -1], "int64")}
OUTPUTS = {
    "embedding_table": ([-1, -1], "float32"),
    "encoder_outputs": ([-1, -1, -1], "float32"),
    "sentence_embedding": ([-1, -1], "float32"),
    "sentence_pair_embedding": ([-1, -1], "float32"),
}


def hf_config_of(config: dict, source: str):
    """The transformers config object of a parsed config.json; an architecture transformers does not know is a
    ValueError naming `source`."""
    import transformers

    model_type = config.get("model_type")
    if not model_type:
        raise ValueError(f"{source}: no 'model_type' (HFEncoder builds the architecture it names, e.g. 'electra')")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ValueError(f"{source}: model_type {model_type!r} is not an architecture the installed transformers "
                         f"{transformers.__version__} knows (models that ship their own code are not loaded)")
    rest = {k: v for k, v in config.items() if k != "model_type"}
    return transformers.AutoConfig.for_model(model_type, **rest)


class HFEncoder(Backbone):
    """The base model `transformers.AutoModel` builds from an HF config, yielding the outputs torchpalm's heads
    read.

    Args:
        dir_or_config: an HF model directory (its config.json is read; load the weights with
            `trainer.load_pretrain(dir)`), a config.json path, or the parsed config dict (with `model_type`).
        phase: 'train' (dropout on) or 'predict'.
        is_pairwise: encode the `*_neg` inputs too (pairwise Match).

    Inputs (a batch dict): token_ids, input_mask [B, L] int64 (padded batches, as the readers yield them);
    segment_ids when the model takes `token_type_ids` and has more than one type.
    Outputs (dict): encoder_outputs [B, L, H] (last_hidden_state), sentence_embedding and
    sentence_pair_embedding [B, H] (the model's `pooler_output` when it has a pooler, as BERT and ALBERT do, else
    the first token's hidden state, as ELECTRA's and DistilBERT's classifiers read it), embedding_table [V, E].
    """

    def __init__(self, dir_or_config: dict | str | os.PathLike, phase: str = "train", is_pairwise: bool = False):
        super().__init__()
        import transformers

        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        source, config = config_source(dir_or_config), dict(load_config(dir_or_config))
        config.pop("is_pairwise", None)
        hf_config = hf_config_of(config, source)
        try:
            self.model = transformers.AutoModel.from_config(hf_config, trust_remote_code=False)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{source}: transformers cannot build a {config['model_type']!r} model from this "
                             f"config: {e}") from None
        self.config_source = source
        # what rebuilds it (checkpoints, bundles): the full HF config, JSON-serialisable
        self.config = {**hf_config.to_dict(), "model_type": config["model_type"]}
        self.config.pop("_name_or_path", None)
        self.is_pairwise, self.phase = is_pairwise, phase
        takes = inspect.signature(self.model.forward).parameters
        self.uses_segments = "token_type_ids" in takes and (getattr(hf_config, "type_vocab_size", 0) or 0) > 1
        self.train(phase == "train")

    @classmethod
    def from_config(cls, config: dict | str | os.PathLike, phase: str = "train") -> HFEncoder:
        """Builds the encoder from an HF config.json (or its parsed dict, or the model directory)."""
        is_pairwise = bool(config.get("is_pairwise", False)) if isinstance(config, dict) else False
        return cls(config, phase=phase, is_pairwise=is_pairwise)

    @property
    def hidden_size(self) -> int:
        """H, the width of `encoder_outputs` and `sentence_embedding`, whatever the config calls it (DistilBERT's
        `dim`, ALBERT's `hidden_size` beside a smaller `embedding_size`): transformers' config maps its own name
        to `hidden_size`."""
        size = getattr(self.model.config, "hidden_size", None)
        if not isinstance(size, int):
            raise ValueError(f"{self.config_source}: the {self.config['model_type']!r} config gives no hidden size "
                             f"(the width of the encoder's outputs); pass the heads' input_dim yourself")
        return size

    @property
    def inputs_attr(self) -> dict:
        attrs = {k: v for k, v in INPUTS.items() if k != "segment_ids" or self.uses_segments}
        if self.is_pairwise and self.phase == "train":
            attrs.update({f"{k}_neg": v for k, v in list(attrs.items())})
        return attrs

    @property
    def outputs_attr(self) -> dict:
        attrs = dict(OUTPUTS)
        if self.is_pairwise and self.phase == "train":
            attrs.update({f"{k}_neg": v for k, v in OUTPUTS.items() if k != "embedding_table"})
        return attrs

    def check_reader(self, reader) -> None:
        """Refuses what `refuse_oversized_reader` refuses (the model's embedding table and position table)."""
        self.refuse_oversized_reader(reader, self.model.get_input_embeddings().num_embeddings,
                                     self.config.get("max_position_embeddings") or None)

    def pretrained_state(self, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
        """The tensors of an HF model directory/file (names with or without the task model's prefix, such as
        `electra.`) or of a torchpalm checkpoint, in this backbone's names; and the file read. What
        `trainer.load_pretrain` loads for this backbone."""
        file = find_weights_file(path)
        state = load_state_file(file)
        backbone = scoped(state, BACKBONE)
        if backbone:  # a torchpalm checkpoint
            return backbone, file
        prefix = f"{self.model.base_model_prefix}."
        own = self.state_dict()
        converted = {f"model.{k.removeprefix(prefix)}": v for k, v in state.items()}
        unused = [k for k, name in zip(state, converted, strict=True) if name not in own]
        if unused:
            logger.info("%s: %d tensors without a place in the %s base model were left out (e.g. %s)", file,
                        len(unused), type(self.model).__name__, unused[:3])
        return {k: v for k, v in converted.items() if k in own}, file

    def encode(self, batch: dict[str, torch.Tensor], suffix: str = "") -> dict[str, torch.Tensor]:
        ids = batch["token_ids" + suffix]
        kwargs = {"input_ids": ids, "attention_mask": batch.get("input_mask" + suffix)}
        if self.uses_segments and "segment_ids" + suffix in batch:
            kwargs["token_type_ids"] = batch["segment_ids" + suffix]
        out = self.model(**kwargs, return_dict=True)
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        pooled = hidden[:, 0] if pooled is None else pooled
        return {"encoder_outputs": hidden, "sentence_embedding": pooled, "sentence_pair_embedding": pooled}

    def forward(self, batch: dict[str, torch.Tensor], outputs=None) -> dict[str, torch.Tensor]:
        """The features of `outputs_attr` (`outputs`, the names a head reads, is accepted and not needed)."""
        if "cu_seqlens" in batch:
            raise ValueError("HFEncoder takes padded batches ([B, L] token_ids with input_mask), not packed ones")
        out = self.encode(batch)
        out["embedding_table"] = self.model.get_input_embeddings().weight
        if self.is_pairwise and "token_ids_neg" in batch:
            out.update({f"{k}_neg": v for k, v in self.encode(batch, "_neg").items()})
        return out

