"""docs/adding-a-model.md, followed as a new user would: its worked example's files are taken from the
document itself (the fenced blocks whose first line names the file), written into a fresh models
folder, and `make` runs on them. The errors the document quotes are the ones benchbook gives."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

DOC = REPO / "docs" / "adding-a-model.md"
FILE_BLOCK = re.compile(r"```(?:yaml|python)\n# (?P<dir>[\w-]+)/(?P<model>[\w-]+)/(?P<file>config\.yaml|load\.py)\n"
                        r"(?P<body>.*?)```", re.S)
SHOWN_PATH = "/home/you/benchbook/my_models"  # how the document writes the user's models folder


def documented_files() -> dict[str, str]:
    """{"config.yaml": text, "load.py": text} of the worked example, exactly as the document shows them."""
    files = {}
    for m in FILE_BLOCK.finditer(DOC.read_text()):
        files[m["file"]] = f"# {m['dir']}/{m['model']}/{m['file']}\n{m['body']}"
    return files


def documented_errors() -> list[str]:
    """The one-line messages in the document's ``text`` blocks that quote the worked example's folder."""
    blocks = re.findall(r"```text\n(.*?)```", DOC.read_text(), re.S)
    return [line for b in blocks for line in b.splitlines() if SHOWN_PATH in line]


@pytest.fixture
def user_models(tmp_path) -> Path:
    """``<tmp>/my_models/tiny_unet/`` with the two files copied out of the document."""
    folder = tmp_path / "my_models" / "tiny_unet"
    folder.mkdir(parents=True)
    files = documented_files()
    assert sorted(files) == ["config.yaml", "load.py"], sorted(files)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder.parent


def _make(*args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BENCHBOOK_MODELS_DIR", None)
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_example_is_a_model(user_models):
    import torch

    from lib.config.models import build_model, check_load_py, get_model

    cfg = get_model("tiny_unet", user_models)
    check_load_py(cfg)
    assert cfg.shape_dims == ("height", "width") and [s.label for s in cfg.default_shapes("cpu")] == ["64x64",
                                                                                                      "128x128"]
    model = build_model(cfg)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 50, 38))  # any size in the profile, even an odd one
    assert out.shape == (2, 4, 50, 38)


def test_make_models_lists_it_as_documented(user_models):
    r = _make("models", f"MODELS_DIR={user_models}")
    assert r.returncode == 0, r.stderr
    shown = re.search(r"```text\n(tiny_unet .*?)\n```", DOC.read_text()).group(1)
    assert r.stdout.strip() == shown


def test_the_documented_config_errors_are_the_real_ones(user_models):
    config = user_models / "tiny_unet" / "config.yaml"
    good = config.read_text()
    errors = documented_errors()
    assert len(errors) == 3, errors

    def plan_error(text: str) -> str:
        config.write_text(text)
        r = _make("report", "MODEL=tiny_unet", f"MODELS_DIR={user_models}", f"REPORTS_DIR={user_models.parent}/r")
        assert r.returncode != 0
        return r.stderr.strip().splitlines()[0].replace(str(user_models), SHOWN_PATH)

    assert plan_error(good.replace("    example: [2, 3, 64, 64]", "    exmaple: [2, 3, 64, 64]")) == errors[0]
    assert plan_error(good.replace("    example: [2, 3, 64, 64]", "    example: [2, 3, 16, 16]")) == errors[1]

    # the third is found by the export step, which runs the module once before exporting
    from lib.artifacts.export import ensure_onnx
    from lib.common.errors import ConfigError
    from lib.config.models import get_model

    config.write_text(good.replace("    dims: [batch, classes, height, width]\n",
                                   "    dims: [batch, classes, height, width]\n  - name: features\n"
                                   "    dims: [batch, channels]\n"))
    with pytest.raises(ConfigError) as e:
        ensure_onnx(get_model("tiny_unet", user_models), user_models.parent / "cache")
    assert f"ConfigError: {e.value}".replace(str(user_models), SHOWN_PATH) == errors[2]


@pytest.mark.slow
def test_the_worked_example_runs_first_time(user_models, tmp_path):
    """The document's command, on a fresh cache: export, every CPU backend, parity, a report."""
    reports = tmp_path / "reports"
    r = _make("report", "MODEL=tiny_unet", f"MODELS_DIR={user_models}", "ITERS=3", "DURATION=0.1",
              f"REPORTS_DIR={reports}", f"CACHE_DIR={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = next((reports / "tiny_unet").iterdir())
    assert (run / "report.html").stat().st_size > 10_000
    import json

    for combo in ("torch-fp32", "ort-fp32"):
        points = sorted((run / "bench" / combo / "points").glob("*.json"))
        assert len(points) == 4, combo
        for p in points:
            rec = json.loads(p.read_text())
            assert rec["status"] == "ok" and rec["parity"]["passed"], (combo, p.name, rec.get("error"))
    assert "error" not in json.loads((run / "export.json").read_text())
