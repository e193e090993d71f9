"""lib/ is laid out by pipeline stage, and imports run one way: a module imports only from its own stage or an
earlier one. Every module under lib/ is parsed (ast, nothing imported), lazy imports inside functions included,
so a cycle cannot hide behind an import placed in a function body."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LIB = REPO / "lib"

# The stages, in the one order imports may run (each may import from those before it, never after).
STAGES = ("common", "config", "measure", "artifacts", "backends", "results", "sweep", "runner", "report", "pipeline")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str | None:
    """The stage of ``lib.<first>...``; None for ``lib`` itself (the lazy public API) and non-lib modules."""
    parts = module.split(".")
    if parts[0] != "lib" or len(parts) == 1:
        return None
    first = parts[1]
    if first in STAGES:
        return first
    return "?"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file of ``module``, relative ones resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import x`` may name a submodule: the target is then one level deeper
            out += [(node.lineno, f"{target}.{a.name}" if not node.module else target) for a in node.names]
    return out


def _backward(path: Path, module: str) -> list[str]:
    """The imports of ``module`` (its file at ``path``) from a later stage than its own."""
    own = _stage(module)
    if own in (None, "?"):
        return []
    wrong = []
    for line, target in _imports(path, module):
        theirs = _stage(target)
        if theirs not in (None, "?") and STAGES.index(theirs) > STAGES.index(own):
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            wrong.append(f"{where}:{line} ({own}) imports {target} ({theirs})")
    return wrong


def _modules() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_belongs_to_a_stage():
    strays = [str(p.relative_to(REPO)) for p in _modules()
              if p != LIB / "__init__.py" and _stage(_module_name(p)) == "?"]
    assert not strays, (f"{strays}: not in a stage; put each in one of lib/{{{','.join(STAGES)}}}/ "
                        f"(tests/test_layout.py STAGES gives their order)")


def test_imports_run_one_way():
    wrong = [w for p in _modules() for w in _backward(p, _module_name(p))]
    assert not wrong, ("imports from a later stage (order: " + " < ".join(STAGES) + "); move the thing needed "
                       "down to the earlier stage:\n" + "\n".join(wrong))


def test_a_backward_import_is_found(tmp_path):
    """The check itself, on a module of the common stage that imports later stages (relative, lazy inside a
    function, absolute) and its own stage (allowed)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from .errors import ConfigError\n"
                     "from ..sweep.plan import make_plan\n"
                     "def f():\n    from ..pipeline import cli\n"
                     "import lib.results.run\n")
    wrong = _backward(probe, "lib.common.probe")
    assert sorted(w.split(" imports ")[1] for w in wrong) == ["lib.pipeline (pipeline)", "lib.results.run (results)",
                                                             "lib.sweep.plan (sweep)"], wrong
    assert _backward(probe, "lib.pipeline.probe") == []  # the last stage may import every other


def _private_imports(path: Path) -> list[str]:
    """``from <module> import _name`` in ``path``: a private name taken from another module."""
    return [f"{path.relative_to(REPO)}:{node.lineno} imports {a.name} from {'.' * node.level}{node.module or ''}"
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.ImportFrom) for a in node.names
            if a.name.startswith("_") and not a.name.startswith("__")]


def test_private_names_do_not_cross_modules():
    """A ``_name`` is its module's own: another module that needs it gets a public name (or the helper moves to
    the earliest stage that needs it), so renaming a private helper never breaks a distant import."""
    wrong = [w for p in _modules() for w in _private_imports(p)]
    assert not wrong, "private names imported from another module; make them public or move them:\n" + "\n".join(wrong)
