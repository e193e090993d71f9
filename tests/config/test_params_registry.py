"""Every run parameter is defined once, in lib.config.params.RUN_PARAMETERS; each place that restates one is
checked against it here: the Makefile's defaults and PARAMS list, `make help` (run for real), every notebook's
``parameters`` cell (names and defaults, read from the .ipynb JSON) and the README's parameter table."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from conftest import REPO
from lib.config.params import NOTEBOOK_OWN, RUN_PARAMETERS, RunParams, help_lines, param

NAMES = [p.name for p in RUN_PARAMETERS]


def _makefile() -> str:
    return (REPO / "Makefile").read_text().replace("\\\n", " ")  # continuation lines joined


def _make_defaults() -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+) \?=(.*)$", _makefile(), re.M)}


def _make_list(var: str) -> list[str]:
    m = re.search(rf"^{var} :=(.*)$", _makefile(), re.M)
    assert m, f"Makefile has no {var} := ..."
    return m.group(1).split()


def _notebook_parameters(stem: str) -> dict[str, str]:
    """{name: default as text} of the notebook's tagged ``parameters`` cell."""
    cells = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    cell, = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{stem}: only name = value lines"
        out[node.targets[0].id] = str(ast.literal_eval(node.value))
    return out


def _readme_table() -> dict[str, str]:
    """{NAME: default} of the README's parameter table; a row may hold several (`A`, `B` | `1`, `2`)."""
    out = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"`[A-Z_0-9]+`(, `[A-Z_0-9]+`)*", cells[0]):
            continue
        names = re.findall(r"`([A-Z_0-9]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(", ")] if len(names) > 1 else [cells[1].strip("`")]
        assert len(defaults) == len(names), line
        for name, default in zip(names, defaults):
            assert name not in out, f"README: {name} has two rows"
            out[name] = default
    return out


def test_registry_is_consistent():
    assert len(set(NAMES)) == len(NAMES)
    run_fields = {f.name for f in fields(RunParams)} - {"options"}
    given = [p.field for p in RUN_PARAMETERS if p.field]
    assert sorted(given) == sorted(run_fields), "every RunParams field is one parameter's, once"
    for p in RUN_PARAMETERS:
        assert p.help and "\n" not in p.help, p.name
        assert param(p.name.lower()) is p


def test_defaults_parse_to_runparams_defaults():
    """The registry's default texts, parsed, are the dataclass's defaults (paths aside: they are made absolute)."""
    raw = {p.field: p.default for p in RUN_PARAMETERS if p.field}
    parsed, plain = RunParams.from_strings(**raw), RunParams(model=param("MODEL").default)
    for f in fields(RunParams):
        if f.name not in ("weights", "models_dir", "cache_dir", "data", "calib"):
            assert getattr(parsed, f.name) == getattr(plain, f.name), f.name


def test_makefile_defaults_and_params_list():
    defaults = _make_defaults()
    for p in RUN_PARAMETERS:
        assert defaults.get(p.name) == p.default, f"Makefile: {p.name} ?= {defaults.get(p.name)!r}, registry {p.default!r}"
    assert _make_list("PARAMS") == NAMES, "Makefile PARAMS: the registry's names in its order"
    other = set(_make_list("OTHER_VARS"))
    stray = sorted(set(defaults) - set(NAMES) - other)
    assert not stray, f"Makefile variables that are neither a run parameter nor in OTHER_VARS: {stray}"


def test_every_makefile_default_is_the_value_make_uses():
    """A ``?=`` default must survive to the recipes: a name that an earlier line (``unexport``, a ``:=``) has
    already defined, even as empty, makes ``?=`` a no-op (``make fidelity`` once ran ``--batch ''``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env = {k: v for k, v in env.items() if k not in _make_defaults()}  # the Makefile's own defaults, not ours
    proc = subprocess.run(["make", "-pn", "--no-print-directory", "help", f"PYTHON={sys.executable}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    db = {m.group(1): m.group(3).strip() for m in re.finditer(r"^(\w+) (\?|:)?= ?(.*)$", proc.stdout, re.M)}
    wrong = {n: (v, db.get(n)) for n, v in _make_defaults().items() if db.get(n) != v and n != "PYTHON"}
    assert not wrong, f"Makefile defaults (written, used by make): {wrong}"
    dry = subprocess.run(["make", "-n", "--no-print-directory", "fidelity", f"PYTHON={sys.executable}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "--batch '32'" in dry.stdout, dry.stdout + dry.stderr


def test_make_help_shows_every_parameter():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "help", f"PYTHON={sys.executable}", "ITERS=7"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = help_lines({"ITERS": "7"})
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
    assert any(ln.startswith("  ITERS=7 ") for ln in lines)  # the value make has now, not the default


@pytest.mark.parametrize("stem", sorted(NOTEBOOK_OWN))
def test_notebook_parameters_cell(stem):
    got = _notebook_parameters(stem)
    want = {}
    for p in RUN_PARAMETERS:
        for entry in p.notebooks:
            if entry[0] == stem:
                want[entry[1]] = entry[2] if len(entry) > 2 else p.default
    for name, default in want.items():
        assert name in got, f"{stem}: no parameter {name}"
        assert got[name] == default, f"{stem}: {name} = {got[name]!r}, registry {default!r}"
    unknown = sorted(set(got) - set(want) - set(NOTEBOOK_OWN[stem]))
    assert not unknown, f"{stem}: parameters the registry does not know: {unknown}"
    missing = sorted(set(NOTEBOOK_OWN[stem]) - set(got))
    assert not missing, f"{stem}: NOTEBOOK_OWN names {missing}, which it does not take"


def test_every_notebook_is_in_the_registry():
    assert sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb")) == sorted(NOTEBOOK_OWN)


def test_benchmark_notebook_takes_the_run_folder_not_the_run_parameters():
    assert set(_notebook_parameters("10_benchmark")) == {"run_dir", "backend", "precision", "bench_pass"}


def test_readme_table():
    table = _readme_table()
    assert sorted(table) == sorted(NAMES), \
        f"README table: missing {sorted(set(NAMES) - set(table))}, extra {sorted(set(table) - set(NAMES))}"
    for p in RUN_PARAMETERS:
        assert table[p.name] == (p.shown or p.default), f"README: {p.name} shows {table[p.name]!r}"
