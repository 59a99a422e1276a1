"""The manual in docs/ cannot drift from the code: every runnable python block of each page runs, in order, in one
namespace per page (as tests/unit/test_customizing_guide.py does for docs/customizing.md, which it checks in
more detail), the config page's YAML is a valid config, and every `file.py:function` that docs/architecture.md
walks through exists.

A block that cannot run on its own (it needs a real model, the network or a GPU) is preceded by
`<!-- not run: why -->`; each page's count of runnable blocks is pinned so that blocks are not silently dropped.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import yaml

from torchpalm import config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "torchpalm"
BLOCK = re.compile(r"^(<!-- not run: [^>]+ -->\n)?```python\n(.*?)^```", re.S | re.M)
# pages whose python blocks run here (customizing.md has its own test), with how many of them run
RUNNABLE = {"checkpoints.md": 3, "inference.md": 2, "data-formats.md": 3, "conversion.md": 3, "training.md": 2}


def runnable_blocks(page: Path) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block of `page` not marked `<!-- not run: ... -->`."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in BLOCK.finditer(text) if not m.group(1)]


def test_every_page_with_python_either_runs_it_or_says_why_not():
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "customizing.md":
            assert len(runnable_blocks(page)) == RUNNABLE.get(page.name, 0), page.name
    text = "".join(p.read_text(encoding="utf-8") for p in DOCS.glob("*.md"))
    assert "  ```python" not in text  # an indented block would not run (and is not found above)


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_the_python_blocks_of_a_page_run(name, tmp_path, monkeypatch):
    page = DOCS / name
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": f"docs_{name}"}
    for first_line, code in runnable_blocks(page):
        # padded so that a traceback names the page's own line numbers
        exec(compile("\n" * (first_line - 1) + code, str(page), "exec"), ns)
    if name == "checkpoints.md":
        assert ns["again"].cur_train_step == 16 == ns["trainer"].cur_train_step
        assert (tmp_path / "outputs" / "ckpt.step16" / "complete.json").is_file()
    if name == "inference.md":
        assert (tmp_path / "model.onnx").is_file()
    if name == "training.md":
        assert [r["step"] for r in ns["trainer"].eval_history] == [8, 16]
        assert (tmp_path / "outputs" / "best.sst2" / "complete.json").is_file()
    if name == "conversion.md":
        assert all(torch.equal(ns["original"][k], ns["again"][k]) for k in ns["original"])
        assert all(torch.equal(ns["state"][k], v) for k, v in ns["backbone"].state_dict().items())
    if name == "data-formats.md":
        assert ns["batch"]["token_ids"].shape == (2, 5)  # the last of the three formats read
        assert ns["error"] == "bad.tsv:3: expected 2 tab-separated fields (header: ['label', 'text_a']), got 3"


def test_the_config_page_example_is_a_valid_config(tmp_path):
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 1
    cfg = config.validate(yaml.safe_load(blocks[0]), str(tmp_path))  # every key known, every value well typed
    assert [t["name"] for t in cfg["tasks"]] == ["slot", "intent"]


def test_the_readme_layout_names_every_module_once():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = re.search(r"^## Layout\n+```\n(.*?)^```", readme, re.S | re.M).group(1)
    modules = [p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    packages = [f"{p.parent.name}/" for p in SRC.glob("*/__init__.py")]
    named = re.findall(r"[\w/]+\.py\b|\b\w+/", layout)
    assert [m for m in modules + packages if named.count(m) != 1] == []


ARCH_NAME = re.compile(r"`([\w/]+\.py):([\w.]+)")


def defined_names(path: Path) -> set[str]:
    """Dotted names a module defines: its functions, classes and assignments, and the methods of its classes."""
    names: set[str] = set()

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + ".")
            elif isinstance(node, ast.Assign) and not prefix:
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))

    visit(ast.parse(path.read_text(encoding="utf-8")).body, "")
    return names


def test_architecture_names_exist():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    refs = ARCH_NAME.findall(text)
    assert len(refs) > 40
    missing = []
    for file, name in refs:
        path = SRC / file
        if not path.is_file() or name not in defined_names(path):
            missing.append(f"{file}:{name}")
    assert not missing, f"docs/architecture.md names what the code does not define: {missing}"
    files = set(re.findall(r"`([\w/]+\.py)`", text))
    assert all((SRC / f).is_file() for f in files), files
