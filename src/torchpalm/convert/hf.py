"""HuggingFace BERT / RoBERTa / ERNIE <-> torchpalm: parameter name maps, and whole-directory converters.

HF keeps query/key/value as three linears; torchpalm fuses them into one `qkv` linear (rows q, then k, then v),
so those three are concatenated on the way in and split on the way out. Every other name maps one to one, and
the three model families share them: RoBERTa's weights are BERT's (its position offset is computed, not
stored), ERNIE adds `embeddings.task_type_embeddings`.

`from_hf(hf_dir, out_dir)` and `to_hf(src, out_dir)` convert whole directories, `save_pretrained`-style:
config.json + model.safetensors + the tokenizer files. Every tensor is checked against the model the config
describes, so a missing tensor or a wrong shape is an error naming the tensor, the file and what was expected.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch

from ..permissions import follow_umask
from ..state_keys import BACKBONE, head_scopes, scoped
from ..weights import find_weights_file, load_state_file
from . import modernbert as mb
from .deberta import deberta_hf_to_torchpalm, deberta_torchpalm_to_hf, is_deberta_state
from .name_map import NameMap
from .paddle import load_paddle_model, params_dir

logger = logging.getLogger("torchpalm")

# torchpalm name -> HF name (without the optional "bert." prefix); {i} is the layer index.
_PLAIN = {
    "word_embeddings.weight": "embeddings.word_embeddings.weight",
    "position_embeddings.weight": "embeddings.position_embeddings.weight",
    "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "task_embeddings.weight": "embeddings.task_type_embeddings.weight",  # ERNIE (HF ErnieModel, use_task_id)
    "embed_norm.weight": "embeddings.LayerNorm.weight",
    "embed_norm.bias": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
_LAYER = {
    "attn_out.weight": "attention.output.dense.weight",
    "attn_out.bias": "attention.output.dense.bias",
    "attn_norm.weight": "attention.output.LayerNorm.weight",
    "attn_norm.bias": "attention.output.LayerNorm.bias",
    "ffn_in.weight": "intermediate.dense.weight",
    "ffn_in.bias": "intermediate.dense.bias",
    "ffn_out.weight": "output.dense.weight",
    "ffn_out.bias": "output.dense.bias",
    "ffn_norm.weight": "output.LayerNorm.weight",
    "ffn_norm.bias": "output.LayerNorm.bias",
}
BERT_NAMES = NameMap(_PLAIN, _LAYER, qkv=("query", "key", "value"))
# Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
_LEGACY = {".gamma": ".weight", ".beta": ".bias"}


# The base model's attribute in HF's task models (BertForMaskedLM.bert, RobertaForMaskedLM.roberta, ...).
_MODEL_PREFIXES = ("bert.", "roberta.", "ernie.", "deberta.", "model.")


def _strip(name: str) -> str:
    for old, new in _LEGACY.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    for prefix in _MODEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def hf_to_torchpalm(hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Converts an HF BERT/RoBERTa/ERNIE state dict (with or without the `bert.`/`roberta.`/`ernie.` prefix)
    to torchpalm names.

    Returns the converted dict and the HF keys that have no torchpalm counterpart (e.g. MLM/NSP heads).
    A DeBERTa-v2/v3 state dict (its own attention names) is converted by `convert.deberta`'s map, a ModernBERT's
    by `convert.modernbert`'s.
    """
    if is_deberta_state(hf_state):
        return deberta_hf_to_torchpalm(hf_state)
    if mb.is_modernbert_state(hf_state):
        return mb.modernbert_hf_to_torchpalm(hf_state)
    out, used = BERT_NAMES.to_torchpalm({_strip(k): v for k, v in hf_state.items()})
    unused = [k for k in hf_state if _strip(k) not in used and not _strip(k).endswith("position_ids")]
    return out, unused


def torchpalm_to_hf(state: dict[str, torch.Tensor], prefix: str = "", model_type: str = "bert"
                    ) -> dict[str, torch.Tensor]:
    """Converts torchpalm BERT/RoBERTa/ERNIE names back to HF `BertModel`/`RobertaModel`/`ErnieModel` names
    (optionally prefixed, e.g. 'bert.'); `model_type` 'deberta-v2': `DeBERTaV2`'s to `DebertaV2Model`'s;
    ModernBERT's names (model_type 'modernbert', or recognised) to `ModernBertModel`'s."""
    if model_type == "deberta-v2":
        return deberta_torchpalm_to_hf(state, prefix)
    if model_type == "modernbert" or mb.is_torchpalm_modernbert_state(state):
        return mb.modernbert_torchpalm_to_hf(state, prefix)
    return BERT_NAMES.to_hf(state, prefix)


# ---------------------------------------------------------------- whole directories
# HF model_type -> (the HF base model class, torchpalm's backbone class)
MODEL_TYPES = {"bert": ("BertModel", "BERT"), "roberta": ("RobertaModel", "RoBERTa"), "ernie": ("ErnieModel", "ERNIE"),
               "deberta-v2": ("DebertaV2Model", "DeBERTaV2"), "modernbert": ("ModernBertModel", "ModernBERT")}
TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "spm.model")  # spm.model: DeBERTa-v3's SentencePiece model
# keys of torchpalm/PALM backbone configs that HF configs spell differently or do not have
_OURS_ONLY = ("sent_type_vocab_size", "use_task_emb", "is_pairwise")
# Masked-LM checkpoints (roberta-base, BertForMaskedLM saves) have no pooler; transformers initialises it then.
_OPTIONAL = ("pooler.weight", "pooler.bias")
# ... and a bare ModernBertModel has no prediction head (its task models and masked-LM checkpoints do)
_OPTIONAL_OF = {"modernbert": mb.OPTIONAL}


class ConversionError(ValueError):
    """A model directory that cannot be converted; the message names the file, the tensor and what was expected."""


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def model_type_of(config: dict, state: dict[str, torch.Tensor] | None = None) -> str:
    """'bert', 'roberta' or 'ernie': the config's `model_type`, else its `architectures`, else the weights
    (`roberta.*` names, a task embedding), else 'bert'.

    A BERT-format checkpoint published under a RoBERTa name (hfl/chinese-roberta-wwm-ext: WordPiece vocab.txt,
    `BertForMaskedLM`, model_type 'bert') is 'bert', as HF and PaddlePALM load it.
    """
    declared = config.get("model_type")
    if declared in MODEL_TYPES:
        return declared
    if declared:
        raise ConversionError(f"model_type {declared!r} is not convertible; expected one of {sorted(MODEL_TYPES)}")
    for arch in config.get("architectures") or []:
        if str(arch).lower().startswith("debertav2"):
            return "deberta-v2"
        for model_type in ("roberta", "ernie", "bert"):
            if str(arch).lower().startswith(model_type):
                return model_type
    names = list(state or ())
    if is_deberta_state(state or {}):
        return "deberta-v2"
    if mb.is_modernbert_state(state or {}):
        return "modernbert"
    if any(k.startswith("roberta.") for k in names):
        return "roberta"
    if any(k.endswith("task_type_embeddings.weight") for k in names) or "task_type_vocab_size" in config:
        return "ernie"
    return "bert"


def _skeleton(model_type: str, config: dict):
    """The torchpalm backbone `config` describes, on the meta device (shapes only, no memory, no init cost)."""
    from .. import backbone as backbones

    cls = getattr(backbones, MODEL_TYPES[model_type][1])
    try:
        with torch.device("meta"):
            return cls.from_config(config, phase="predict")
    except (KeyError, ValueError, TypeError) as e:
        raise ConversionError(f"config does not describe a {cls.__name__} backbone: {e.args[0] if e.args else e}"
                              ) from None


def _check_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], file: str, what: str,
                   optional: tuple[str, ...] = ()) -> None:
    """Every expected tensor is present with its shape; errors name the tensor, the file and the expectation.

    `optional` tensors may be absent (a note is logged); when present their shape is checked too."""
    absent_optional = [k for k in optional if k in expected and k not in got]
    if absent_optional:
        logger.warning("%s: no %s (the pooler of checkpoints saved from a masked-LM model, e.g. roberta-base, or "
                       "the prediction head of a bare ModernBertModel); it is left out, and a model loading this keeps "
                       "its own initialisation, as transformers does",
                       file, " / ".join(absent_optional))
    expected = {k: v for k, v in expected.items() if k not in absent_optional}
    missing = [k for k in expected if k not in got]
    if missing:
        raise ConversionError(f"{file}: missing tensor {missing[0]!r} (expected shape {list(expected[missing[0]].shape)}"
                              f" for {what}){f'; {len(missing) - 1} more missing' if len(missing) > 1 else ''}")
    for name, value in expected.items():
        if tuple(got[name].shape) != tuple(value.shape):
            raise ConversionError(f"{file}: tensor {name!r} has shape {list(got[name].shape)}, expected "
                                  f"{list(value.shape)} for {what}")


def _copy_tokenizer_files(src_dir: str, out_dir: str) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        path = os.path.join(src_dir, name)
        if os.path.isfile(path) and os.path.abspath(src_dir) != os.path.abspath(out_dir):
            shutil.copyfile(path, os.path.join(out_dir, name))
            copied.append(name)
    return copied


def _write_wordpiece_tokenizer_config(out_dir: str, do_lower_case: bool | None, max_length: int | None) -> None:
    """tokenizer_config.json for out_dir's vocab.txt: a copied one is kept (do_lower_case given: set in it); none
    copied: BertTokenizer, do_lower_case as given or inferred from the vocabulary's case."""
    from ..tokenizer import is_uncased_vocab, load_vocab

    path = os.path.join(out_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        if do_lower_case is None:
            return
        with open(path, encoding="utf-8") as f:
            tokenizer_config = json.load(f)
    else:
        tokenizer_config = {"tokenizer_class": "BertTokenizer"}
        if max_length:
            tokenizer_config["model_max_length"] = max_length
        if do_lower_case is None:
            do_lower_case = is_uncased_vocab(load_vocab(os.path.join(out_dir, "vocab.txt")))
            logger.info("%s: no tokenizer_config.json came with vocab.txt; wrote one with do_lower_case=%s (the "
                        "vocabulary %s upper-case pieces); pass do_lower_case (the CLI's --do_lower_case) to set it",
                        out_dir, do_lower_case, "has no" if do_lower_case else "has")
    tokenizer_config["do_lower_case"] = bool(do_lower_case)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=1)
        f.write("\n")


def _check_out_dir(src_dir: str, out_dir: str) -> None:
    """The output may not be the source (its weights would be overwritten) nor hold other weights files (which
    would make the directory ambiguous to load)."""
    if os.path.abspath(src_dir) == os.path.abspath(out_dir):
        raise ConversionError(f"{out_dir} is the source directory; write the conversion to another one")
    for name in ("pytorch_model.bin", "model.bin", "model.pt"):
        if os.path.isfile(os.path.join(out_dir, name)):
            raise ConversionError(f"{out_dir} already holds {name}; write the conversion to an empty directory")


def _write_weights(state: dict[str, torch.Tensor], out_dir: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, "model.safetensors"))
    follow_umask(os.path.join(out_dir, "model.safetensors"))  # save_file makes it 0600


def _write_config(config: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def from_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Converts an HF BERT/RoBERTa/ERNIE model directory into a torchpalm one.

    Writes `out_dir/model.safetensors` with the backbone under torchpalm's names (`backbone.<name>`, what
    checkpoints hold and `load_pretrain` reads), `config.json` (HF's, with `model_type` filled in) and the
    tokenizer files. Tensors HF's task heads add (MLM, NSP, classifier) are left out and logged.

    Raises:
        ConversionError: no config.json, an unknown model type, or a tensor missing or of the wrong shape
            (named with the weights file and the shape expected).
        FileNotFoundError: no such directory, or no weights file in it.
    """
    hf_dir, out_dir = os.fspath(hf_dir), os.fspath(out_dir)
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"HF model directory not found: {hf_dir}")
    config_file = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_file):
        raise ConversionError(f"{hf_dir}: no config.json (an HF model directory holds config.json and the weights)")
    config = _read_json(config_file)
    _check_out_dir(hf_dir, out_dir)
    file = find_weights_file(hf_dir)
    hf_state = load_state_file(file)
    model_type = model_type_of(config, hf_state)
    config = {**config, "model_type": model_type}
    if model_type == "ernie":
        config.setdefault("use_task_id", any(k.endswith("task_type_embeddings.weight") for k in hf_state))
    expected = _skeleton(model_type, config).state_dict()
    stripped = {_strip(k): v for k, v in hf_state.items()}
    optional = [k for k in _OPTIONAL_OF.get(model_type, _OPTIONAL) if k in expected]
    _check_tensors(stripped, torchpalm_to_hf(expected, model_type=model_type), file,
                   f"an HF {model_type} model with this config.json",
                   tuple(torchpalm_to_hf({k: expected[k] for k in optional}, model_type=model_type)))
    converted, unused = hf_to_torchpalm(hf_state)
    # e.g. a task embedding in the weights of a config with use_task_id false: HF's model ignores it too
    unused += [torchpalm_to_hf({k: v}, model_type=model_type).popitem()[0]
               for k, v in converted.items() if k not in expected]
    converted = {k: v for k, v in converted.items() if k in expected}
    if unused:
        logger.info("%s: %d tensors without a torchpalm backbone counterpart were left out (e.g. %s)", file,
                    len(unused), unused[:3])
    _write_weights({f"backbone.{k}": v for k, v in converted.items()}, out_dir)
    _write_config(config, out_dir)
    _copy_tokenizer_files(hf_dir, out_dir)
    return out_dir


def load_backbone_weights(path: str | os.PathLike, config: dict | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Backbone tensors in torchpalm names from an HF model directory/file, a torchpalm checkpoint, or a
    PaddlePALM/ERNIE Paddle parameter directory (`<model>/params`, `<model>`, a PALM `ckpt.step<N>`).

    What `load_pretrain` reads, and the source of `to_hf` and `convert_torchpalm_to_paddle`; it lives here, above
    the Paddle reader and beside the HF name map it needs, so that `checkpoint` and `convert` import one way.

    `config` (the backbone's) lets a Paddle directory's shapes be checked against the model, by Paddle name."""
    try:
        file = find_weights_file(path)
    except FileNotFoundError:
        paddle_dir = params_dir(path) if os.path.isdir(path) else None
        if paddle_dir is None:
            raise
        return scoped(load_paddle_model(paddle_dir, config), BACKBONE), paddle_dir
    state = load_state_file(file)
    backbone = scoped(state, BACKBONE)
    if backbone:
        heads = head_scopes(state)
        if heads:
            logger.info("%s: only the backbone is loaded; the heads of %s are not (load_ckpt loads them too)",
                        file, heads)
        return backbone, file
    # (a bare HF ModernBertModel's names start with "layers." too: is_modernbert_state tells them apart)
    if any(k.startswith(("layers.", "word_embeddings.")) for k in state) and not mb.is_modernbert_state(state):
        return state, file
    converted, unused = hf_to_torchpalm(state)
    if not converted:
        raise ValueError(f"{file}: no BERT/ERNIE backbone parameters recognised (first keys: {list(state)[:5]})")
    if unused:
        logger.info("%s: %d tensors not used by the backbone (e.g. %s)", file, len(unused), unused[:3])
    return converted, file


def _source_config(src: str, state: dict[str, torch.Tensor]) -> tuple[dict, str, str]:
    """(backbone config, model_type, where the config came from) of a torchpalm directory: the backbone record
    of a checkpoint's trainer_state.json, else its config.json (PALM's or HF's keys)."""
    classes = {cls_name: model_type for model_type, (_, cls_name) in MODEL_TYPES.items()}
    state_file = os.path.join(src, "trainer_state.json")
    if os.path.isfile(state_file):
        record = _read_json(state_file).get("backbone") or {}
        if record.get("class") is not None:
            if record["class"] not in classes:
                raise ConversionError(f"{state_file}: the backbone is {record['class']!r}; HF conversion takes "
                                      f"{sorted(classes)}")
            return dict(record.get("config") or {}), classes[record["class"]], state_file
    config_file = os.path.join(src, "config.json")
    if os.path.isfile(config_file):
        config = _read_json(config_file)
        declared = config.get("model_type")
        return config, model_type_of(config, torchpalm_to_hf(state, model_type=declared or "bert")), config_file
    raise ConversionError(f"{src}: neither trainer_state.json (a checkpoint) nor config.json says what the backbone "
                          f"is; put the backbone's config.json next to the weights")


def hf_config(backbone, original: dict | None = None) -> dict:
    """The HF config.json of a torchpalm backbone: `original`'s keys (an HF config it came from) updated with
    the backbone's effective settings under HF's names, `model_type` and `architectures`."""
    classes = {cls_name: model_type for model_type, (_, cls_name) in MODEL_TYPES.items()}
    model_type = classes[type(backbone).__name__]
    config = {k: v for k, v in (original or {}).items() if k not in _OURS_ONLY}
    config.update({k: v for k, v in backbone.config.items() if k not in _OURS_ONLY})
    config.update({"model_type": model_type, "architectures": [MODEL_TYPES[model_type][0]]})
    if model_type == "ernie":
        config["type_vocab_size"] = backbone.config["sent_type_vocab_size"]
        config["use_task_id"] = bool(backbone.use_task_emb)
    if model_type == "roberta":
        config.setdefault("bos_token_id", 0)
        config.setdefault("eos_token_id", 2)
    return config


def to_hf(src: str | os.PathLike, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
          do_lower_case: bool | None = None) -> str:
    """Converts a torchpalm checkpoint or converted directory into an HF model directory that
    `transformers.AutoModel.from_pretrained(out_dir)` loads as BertModel, RobertaModel or ErnieModel.

    The backbone class comes from the checkpoint's trainer_state.json, else from config.json (`model_type`;
    PALM's ERNIE configs and task embeddings say ERNIE). Writes model.safetensors (HF names, no prefix),
    config.json and the tokenizer files found in `tokenizer_dir` (default: next to the weights; a training
    checkpoint holds none, so pass the model directory it started from). Head parameters are not converted.

    A WordPiece vocab.txt without a tokenizer_config.json (PALM's model folders, vocabularies copied alone) gets
    one: without it transformers' BertTokenizer lower-cases, which for a cased vocabulary turns "Paris" into other
    ids than the model was trained on. `do_lower_case` is written there (and overrides a copied one's); None
    infers it from the vocabulary: lower-case when no word piece has an upper-case letter, as in uncased and
    Chinese vocabularies.

    Raises:
        ConversionError: a tensor missing, of the wrong shape, or with no place in the HF model (named with
            the file and what was expected); no config to say what the backbone is.
    """
    src, out_dir = os.fspath(src), os.fspath(out_dir)
    state, file = load_backbone_weights(src)
    src_dir = src if os.path.isdir(src) else os.path.dirname(src)
    _check_out_dir(src_dir, out_dir)
    config, model_type, config_source = _source_config(src_dir, state)
    skeleton = _skeleton(model_type, config)
    expected = skeleton.state_dict()
    what = f"the {type(skeleton).__name__} that {config_source} describes"
    _check_tensors(state, expected, file, what, _OPTIONAL_OF.get(model_type, _OPTIONAL))
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ConversionError(f"{file}: tensor {extra[0]!r} has no place in {what} (HF {MODEL_TYPES[model_type][0]})"
                              f"{f'; {len(extra) - 1} more' if len(extra) > 1 else ''}")
    _write_weights(torchpalm_to_hf(state, model_type=model_type), out_dir)
    _write_config(hf_config(skeleton, config if "model_type" in config else None), out_dir)
    tokenizer_dir = os.fspath(tokenizer_dir) if tokenizer_dir is not None else src_dir
    copied = _copy_tokenizer_files(tokenizer_dir, out_dir)
    if "vocab.txt" in copied:
        _write_wordpiece_tokenizer_config(out_dir, do_lower_case, config.get("max_position_embeddings"))
    if not copied:
        logger.warning("%s holds no tokenizer files (%s): %s has the model only; pass tokenizer_dir (the CLI's "
                       "--tokenizer) to add them", tokenizer_dir, ", ".join(TOKENIZER_FILES), out_dir)
    return out_dir
