"""The modules of src/torchpalm import each other one way: no circles, counting imports inside functions too (they
hide a circle from Python's import machinery, not from a reader). The package root `torchpalm/__init__.py` is left
out: it is the user's face (`import torchpalm as palm`) and imports every public module by design."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# Circles still being taken apart (issue 26 item 4: bundle.py, predictor.py and trainer.py). When one is gone,
# delete it here: this test then guards that it stays gone.
KNOWN_CIRCLES: list[set[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the torchpalm modules it imports anywhere in its code} (a package counts as its __init__)."""
    files = {module_name(p): p for p in (SRC / "torchpalm").rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from . import x` imports the module x when there is one, else a name of the package
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names)
        graph[name] = {m for t in targets if t.startswith("torchpalm") for m in [known(t)] if m and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_modules_import_each_other_one_way():
    graph = import_graph()
    assert len(graph) > 60 and "torchpalm.reader.parsing" in graph["torchpalm.reader.base"]
    graph.pop("torchpalm")
    graph = {m: deps - {"torchpalm"} for m, deps in graph.items()}
    found = circles(graph)
    unexpected = [sorted(c) for c in found if c not in KNOWN_CIRCLES]
    assert not unexpected, f"modules that import each other (move what both need below them): {unexpected}"
    gone = [sorted(c) for c in KNOWN_CIRCLES if c not in found]
    assert not gone, f"these circles are gone: delete them from KNOWN_CIRCLES so that they stay gone: {gone}"


def test_inference_code_imports_no_training_code():
    """Loading a bundle and predicting (issue 26 item 4) reach neither the trainers nor the loop nor the optimizer,
    through any chain of imports (functions included)."""
    graph = import_graph()
    graph.pop("torchpalm")
    training = {"torchpalm.trainer", "torchpalm.multihead_trainer", "torchpalm.trainer_core", "torchpalm.loop",
                "torchpalm.optimizer", "torchpalm.lr_sched", "torchpalm.sampling", "torchpalm.balancing",
                "torchpalm.evaluation", "torchpalm.metrics_log", "torchpalm.config", "torchpalm.components"}
    for start in ("torchpalm.predictor", "torchpalm.bundle", "torchpalm.prediction", "torchpalm.model"):
        seen, todo = set(), [start]
        while todo:
            for dep in graph.get(todo.pop(), set()) - {"torchpalm"} - seen:
                seen.add(dep)
                todo.append(dep)
        assert not seen & training, f"{start} imports training code: {sorted(seen & training)}"


def test_a_circle_through_an_import_inside_a_function_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [{"a", "b", "c"}]


# Private names of other code that a module may read, and why.
FOREIGN_PRIVATE_OK = {
    "_step_supports_amp_scaling": "torch's own flag on its optimizers (GradScaler reads it too): the optimizer "
                                  "skips a non-finite step on the device (loop.py)",
}
# Variables that hold an object of the module's own class, whose private members the module may use.
OWN_OBJECTS = {
    "torchpalm/backbone/packing.py": {"packing"},  # a Packing: its per-batch cache of windowed attention biases
    "torchpalm/reader/base.py": {"new"},  # Reader.clone sets up the copy it made
}


def private_reads(path: Path, root: Path = SRC) -> list[str]:
    """`x._name` (read or written) and `getattr(x, "_name")` in a module where x is not self, cls, super(), a
    class of the module or one of its `OWN_OBJECTS`: a use of another module's private attribute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    own |= {"self", "cls"} | OWN_OBJECTS.get(path.relative_to(root).as_posix(), set())
    reads = []
    for node in ast.walk(tree):
        name, owner = None, None
        if isinstance(node, ast.Attribute):  # read or written
            name, owner = node.attr, node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            name, owner = node.args[1].value, node.args[0]
        if name is None or not name.startswith("_") or name.startswith("__") or name in FOREIGN_PRIVATE_OK:
            continue
        if isinstance(owner, ast.Name) and owner.id in own:
            continue
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
            continue
        reads.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return reads


def test_no_module_reads_another_modules_private_attributes():
    """What a module needs from another's objects it reads through their public members (issue 26)."""
    reads = [r for p in sorted((SRC / "torchpalm").rglob("*.py")) for r in private_reads(p)]
    assert not reads, f"private attributes of other modules read: {reads}"


def test_a_private_read_of_another_modules_attribute_is_found(tmp_path):
    module = tmp_path / "torchpalm" / "m.py"
    module.parent.mkdir()
    module.write_text("class A:\n    def __init__(self):\n        self._mine = 1\n\n"
                      "    def g(self, other):\n        return self._mine, A._h, super()._k, other._pred_backbone\n\n"
                      "def f(a, reader):\n    reader._seed = 1\n"
                      "    return a._mine, reader._input_file, getattr(reader, '_text', None)\n")
    found = sorted(r.split(": ", 1)[1] for r in private_reads(module, tmp_path))
    assert found == ["a._mine", "getattr(reader, '_text', None)", "other._pred_backbone", "reader._input_file",
                     "reader._seed"]
