"""The notebooks on their own (papermill, as a user runs them outside `make`), in a copy of the repository:
defaults resolve against the repository whatever the working folder; with no run yet, 20_analysis and
30_compare say so in one line; after one `make report`, each runs top to bottom with its defaults (the
model named, since the default model is slow on a CPU); and every notebook opens with what it needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TINY = {"model": "tiny_cnn"}


def test_every_notebook_opens_with_what_it_needs_and_does():
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        first = "".join(cells[0]["source"])
        assert cells[0]["cell_type"] == "markdown" and "**Needs**" in first and "**Does**" in first, path.name
        params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
        assert len(params) == 1, path.name
        text = "".join(params[0]["source"])
        for slip in ("repositorys", "runs own", "configs defaults", "runs BACKENDS", '"../'):
            assert slip not in text, (path.name, slip)
        assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{path.name}: stored outputs"


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The files a clone has that the notebooks use, in a fresh folder (no build/, no reports/)."""
    root = tmp_path_factory.mktemp("clone") / "benchbook"
    for part in ("lib", "notebooks", "tests/fixtures"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Makefile", root / "Makefile")
    return root


def _papermill(repo, name: str, cwd, **parameters):
    """Run a notebook of ``repo`` with papermill from ``cwd``; (ok, error text)."""
    import papermill

    out = cwd / f"{name}.out.ipynb"
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(repo)  # the kernel imports the copy's lib, as `make` arranges
    try:
        papermill.execute_notebook(str(repo / "notebooks" / name), str(out), parameters=parameters,
                                   kernel_name="python3", progress_bar=False, cwd=str(cwd))
        return True, ""
    except papermill.PapermillExecutionError as e:
        return False, "\n".join(e.traceback)
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before


@pytest.mark.slow
def test_notebooks_run_with_their_defaults_from_anywhere(repo_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # papermill run from a folder outside the repository
    elsewhere.mkdir()
    models = str(repo_copy / "tests" / "fixtures" / "models")

    # no run yet: one line saying what to do, not a traceback
    for name in ("15_load.ipynb", "20_analysis.ipynb", "30_compare.ipynb"):
        ok, error = _papermill(repo_copy, name, elsewhere)
        assert not ok and error.startswith("error: 0 runs under ") and "make report" in error, error
        assert "Traceback" not in error and "RUNS=''" not in error, error

    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "RUN_ID")}
    proc = subprocess.run(["make", "--no-print-directory", "report", f"PYTHON={sys.executable}", "MODEL=tiny_cnn",
                           f"MODELS_DIR={models}", "ITERS=3", "DURATION=0.05", "WARMUP=0.02", "BACKENDS=torch"],
                          cwd=repo_copy, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ok, error = _papermill(repo_copy, "00_export.ipynb", elsewhere, models_dir=models, **TINY)
    assert ok, error
    # the benchmark notebook takes a run folder (every run parameter is read from it): the plan step makes one
    proc = subprocess.run([sys.executable, "-m", "lib.pipeline.cli", "plan", "--set", "MODEL=tiny_cnn",
                           "--set", f"MODELS_DIR={models}", "--set", "BATCH_SIZES=1", "--set", "ITERS=3",
                           "--set", "DURATION=0.05", "--set", "WARMUP=0.02", "--set", "BACKENDS=torch"],
                          cwd=repo_copy, env={**env, "PYTHONPATH": str(repo_copy)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, error = _papermill(repo_copy, "10_benchmark.ipynb", elsewhere)  # the newest run: the one just planned
    assert ok, error
    runs = sorted((repo_copy / "reports" / "tiny_cnn").iterdir())
    assert len(runs) == 2 and runs[-1] == Path(proc.stdout.strip())  # the notebook measured in that run
    assert (runs[-1] / "bench" / "torch-fp32" / "done.json").exists()
    ok, error = _papermill(repo_copy, "15_load.ipynb", elsewhere)  # the newest run: the notebook's own
    assert ok, error
    assert (runs[-1] / "load_points.parquet").exists() and (runs[0] / "load" / "load.json").exists()
    ok, error = _papermill(repo_copy, "20_analysis.ipynb", elsewhere)
    assert ok, error
    ok, error = _papermill(repo_copy, "30_compare.ipynb", elsewhere)  # the two newest runs of the model
    assert ok, error
    assert sorted(p.name for p in elsewhere.iterdir()) == [f"{p.name}.out.ipynb" for p in NOTEBOOKS], \
        "a notebook wrote outside the repository"
    assert (repo_copy / "build" / "onnx" / "tiny_cnn").is_dir()
    assert not (repo_copy.parent / "build").exists() and not (repo_copy.parent / "reports").exists()
