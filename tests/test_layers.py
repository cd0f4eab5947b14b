"""Imports point down and never go round in a circle (issue 21; DESIGN.md, "Layers").

Every module under tether/ belongs to one layer (LAYERS, longest prefix wins), and a layer may
import only itself and the layers it builds on (BUILDS_ON, taken transitively). Imports are read
with `ast`: top-level ones and those inside functions alike, `importlib.import_module("...")`
with a literal name too; only imports under `if TYPE_CHECKING:` are left out (they never run).
README's layout table names every top-level entry of tether/ (test_readme_lists_every_layer).
"""

from __future__ import annotations

import ast
import gc
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tether"

# layer -> the dotted prefixes of its modules ("tether" alone is the package's own __init__:
# the names users import, `import tether as sy`).
LAYERS: dict[str, tuple[str, ...]] = {
    "errors": ("tether.errors",),
    "wire": ("tether.wire",),
    "ops": ("tether.ops",),
    "data": ("tether.datasets", "tether.transforms"),
    "node": ("tether.node",),
    "remote": ("tether.remote",),
    "transports": ("tether.transports",),
    "privacy": ("tether.privacy",),
    "federated": ("tether.federated",),
    "split": ("tether.split",),
    "duet": ("tether.duet",),
    "dashboard": ("tether.dashboard",),
    "sandbox": ("tether.sandbox",),
    "cli": ("tether.cli", "tether.__main__"),
    "api": ("tether",),
}
# What each layer builds on directly (the test takes the closure). Features (federated, split,
# duet) build on the core, never on each other; privacy's mechanisms (DP-SGD, the accountant,
# the ledger, the attacks) sit below them, for each to use (federated's `fit` trains with DP);
# its SMPC tensors compute through pointers, so privacy builds on remote. The dashboard (the
# owner's page) shows a node's desk, so it needs only the node; Duet and the cli start it.
# Only the cli and the package's __init__ see all.
BUILDS_ON: dict[str, set[str]] = {
    "errors": set(),
    "wire": {"errors"},
    "ops": {"errors"},
    "data": {"errors"},
    "node": {"wire", "ops"},
    "remote": {"wire", "ops"},
    "transports": {"node", "remote"},
    "privacy": {"data", "remote"},
    "federated": {"transports", "data", "privacy"},
    "split": {"remote"},
    "dashboard": {"node"},
    "duet": {"transports", "privacy", "dashboard"},
    "sandbox": {"transports", "data"},
    "cli": {"federated", "split", "duet", "dashboard", "data"},
    "api": {"cli", "sandbox"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def parse(text: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse` with the garbage collector held off. Python 3.11 keeps one AST-construction
    depth counter per interpreter (CPython gh-106905): a finalizer that runs mid-parse and
    parses too (an asyncio task left pending by an earlier test logs its traceback, and 3.11's
    traceback parses the source line for its carets) makes the outer parse fail with
    "SystemError: AST constructor recursion depth mismatch"."""
    gc.disable()
    try:
        return ast.parse(text, filename)
    finally:
        gc.enable()


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST):
    """Every node, except the bodies of `if TYPE_CHECKING:` (their `else:` is kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def imported(name: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) for each tether module that `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in _walk(parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from tether import errors` imports the module tether.errors
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        for target in targets:
            while target and target not in known:  # `import tether.wire.codec.x` -> the module
                target = target.rpartition(".")[0]
            if target.startswith("tether") and target != name:
                found.append((node.lineno, target))
    return sorted(set(found))


def layer_of(name: str) -> str | None:
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            exact_only = prefix == "tether"
            hit = name == prefix or (not exact_only and name.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    return best


def allowed(layer: str) -> set[str]:
    seen, todo = {layer}, [layer]
    while todo:
        for below in BUILDS_ON[todo.pop()]:
            if below not in seen:
                seen.add(below)
                todo.append(below)
    return seen


def graph() -> dict[str, list[tuple[int, str]]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    assert set(LAYERS) == set(BUILDS_ON)
    homeless = [name for name in modules() if layer_of(name) is None]
    assert not homeless, f"modules in no layer (add them to LAYERS and README): {homeless}"


def test_imports_point_down() -> None:
    upward = []
    for name, imports in graph().items():
        mine = layer_of(name)
        if mine is None:
            continue  # reported by test_every_module_has_a_layer
        for line, target in imports:
            theirs = layer_of(target)
            if theirs is not None and theirs not in allowed(mine):
                upward.append(f"{name}:{line} ({mine}) imports {target} ({theirs})")
    assert not upward, "imports that do not point down:\n  " + "\n  ".join(upward)


def test_no_import_cycles() -> None:
    found = cycles({name: {t for _, t in imports} for name, imports in graph().items()})
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_readme_lists_every_layer() -> None:
    """README's layout table has a row for each layer, and names each top-level entry of
    tether/ (package or module)."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Layout") :]
    entries = sorted(
        f"tether/{p.name}/" if p.is_dir() else f"tether/{p.name}"
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem != "__init__")
    )
    missing = [entry for entry in entries if f"`{entry}`" not in table]
    missing += [f"layer {layer}" for layer in LAYERS if f"\n| {layer} |" not in table]
    assert not missing, f"README's layout table does not list: {missing}"


def test_long_modules_say_why() -> None:
    """A module over 400 lines explains its length in its docstring ("long because ...")."""
    unexplained = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > 400:
            doc = ast.get_docstring(parse(text)) or ""
            if "long because" not in doc.lower():
                unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert not unexplained, f"long modules whose docstring does not say why: {unexplained}"


def test_the_check_sees_lazy_imports_and_cycles(tmp_path: Path) -> None:
    """The parser finds imports inside functions, relative ones and `import_module("...")`,
    skips `if TYPE_CHECKING:`; and `cycles` finds a loop through any of them."""
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "if TYPE_CHECKING:\n"
        "    import tether.c\n"
        "def f():\n"
        "    from . import b\n"
        "    importlib.import_module('tether.d')\n"
    )
    known = {f"tether.{n}": tmp_path / f"{n}.py" for n in "abcd"}
    assert imported("tether.a", tmp_path / "a.py", known) == [(6, "tether.b"), (7, "tether.d")]
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
    assert layer_of("tether.node.quick") == "node" and layer_of("tether") == "api"
    assert "node" not in allowed("remote") and "errors" in allowed("cli")
