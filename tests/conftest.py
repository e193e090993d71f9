"""Shared fixtures: the repository's paths, the tiny fixture model, its real ONNX export (made once per
session into a temporary cache) and helpers that write model folders into ``tmp_path``."""

from __future__ import annotations

import copy
import json
import signal
import textwrap
from pathlib import Path

import pytest
import yaml

from lib.measure.timing import HostSentinel

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "models"
MODELS = REPO / "models"

TINY_LOAD_PY = (FIXTURES / "tiny_cnn" / "load.py").read_text()

# A suite started in the background of a non-interactive shell (`nohup make test &`) inherits SIGINT ignored, and
# an ignored signal stays ignored across exec: every make and kernel the Ctrl-C tests start would then shrug off
# their SIGINT (seen: exit 0 and 2 where 130 is right). A handler, unlike SIG_IGN, is reset to the default at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class Log:
    """A ``log=`` callable that keeps the lines, for asserting what a step said it did."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        self.lines.append(str(msg))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(autouse=True)
def _no_models_dir_from_env(monkeypatch):
    """Tests name their models folder; a BENCHBOOK_MODELS_DIR in the caller's shell must not leak in."""
    monkeypatch.delenv("BENCHBOOK_MODELS_DIR", raising=False)


@pytest.fixture(scope="session")
def tiny_raw() -> dict:
    """The tiny model's config.yaml as a dict (copy it before changing it)."""
    return yaml.safe_load((FIXTURES / "tiny_cnn" / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny():
    from lib.config.models import get_model

    return get_model("tiny_cnn", FIXTURES)


@pytest.fixture(scope="session")
def tiny_module(tiny):
    """The tiny model built as the pipeline builds it (seeded, BatchNorm calibrated, eval mode)."""
    from lib.config.models import build_model

    return build_model(tiny)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A session-wide CACHE_DIR; the tiny model's ONNX files live in ``<cache_dir>/onnx``."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_onnx(tiny, cache_dir):
    """The tiny model's FP32 and FP16 ONNX, exported for real once per session: {precision: ExportResult}."""
    from lib.artifacts.export import ensure_onnx

    return ensure_onnx(tiny, cache_dir / "onnx", precisions=("fp32", "fp16"), log=Log())


def write_model(root: Path, folder: str, config: dict | str, load_py: str | None = TINY_LOAD_PY) -> Path:
    """``root/folder/config.yaml`` (+ ``load.py`` unless None); returns the config path."""
    d = Path(root) / folder
    d.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    (d / "config.yaml").write_text(text)
    if load_py is not None:
        (d / "load.py").write_text(textwrap.dedent(load_py))
    return d / "config.yaml"


@pytest.fixture
def make_model(tmp_path, tiny_raw):
    """``make_model(folder, config=None, load_py=TINY_LOAD_PY, **changes)`` writes a model folder under
    ``tmp_path/models`` (the tiny config with ``changes`` applied when no config is given)."""
    root = tmp_path / "models"
    root.mkdir(exist_ok=True)

    def make(folder: str, config: dict | str | None = None, load_py: str | None = TINY_LOAD_PY, **changes) -> Path:
        if config is None:
            config = copy.deepcopy(tiny_raw)
            config["name"] = folder
            config.update(changes)
        return write_model(root, folder, config, load_py)

    make.root = root
    return make


# --- a real (tiny) benchmark run: plan + run_backend for torch/fp32 and ort/fp32 on the CPU ---------------
BENCH_SETTINGS = dict(model="tiny_cnn", backends="torch,ort", precisions="fp32", device="cpu", warmup="0.02",
                      iters="3", duration="0.05", rounds="2", point_cap="0.3", seed="0")


def make_run(reports_dir: Path, cache: Path, run_id: str = "", **changes):
    """``lib.sweep.plan.make_plan`` for the tiny model on the CPU with tiny ITERS/DURATION; returns the Plan."""
    from lib.config.params import RunParams
    from lib.sweep.plan import make_plan

    params = RunParams.from_strings(**{**BENCH_SETTINGS, "models_dir": str(FIXTURES), "cache_dir": str(cache),
                                       **changes})
    return make_plan(params, reports_dir, run_id, log=Log())


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory, cache_dir, tiny_onnx):
    """A measured run folder (both combos, every point): {"run_dir", "plan", "logs", "done"}. Read-only for
    tests: copy it (``copy_run``) before changing anything."""
    from lib.sweep.bench import run_backend

    plan = make_run(tmp_path_factory.mktemp("reports"), cache_dir, run_id="bench-test")
    logs, done = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        # A host at its best throughout: the run's shape (rounds per pass) is what the tests read, and the
        # sweep's replacement of slow-host rounds (tests/sweep/test_bench.py tests it) would vary it on a busy host.
        mp.setattr(HostSentinel, "measure", quiet_sentinel)
        mp.setattr("lib.sweep.bench.cpu_wait_ms", no_cpu_wait)
        for bench_pass, combos in ((1, plan.combos), (2, plan.combos[::-1])):  # as the Makefile runs them
            for combo in combos:
                log = logs.setdefault(combo["backend"], Log())
                done[combo["backend"]] = run_backend(plan.run_dir, combo["backend"], combo["precision"],
                                                     bench_pass=bench_pass, log=log)
    return {"run_dir": plan.run_dir, "plan": plan, "logs": logs, "done": done}


def no_cpu_wait() -> float:
    """``lib.measure.timing.cpu_wait_ms`` of a CPU no other process wants: the round's threads never wait."""
    return 0.0


def quiet_sentinel(self) -> float:
    """``HostSentinel.measure`` of a host always at its best (50 µs)."""
    self.seen.append(50.0)
    return 50.0


@pytest.fixture
def copy_run(bench_run, tmp_path):
    """A private copy of ``bench_run``'s folder, as ``<tmp>/reports/tiny_cnn/<run_id>``."""
    import shutil

    dst = tmp_path / "reports" / "tiny_cnn" / bench_run["run_dir"].name
    shutil.copytree(bench_run["run_dir"], dst)
    return dst


def strip_pass2(run_dir, combo):
    """Undo a combo's pass 2: its rounds of pass 2 and its done.json (as after pass 1)."""
    backend, _, precision = combo.rpartition("-")
    from lib.common.cache import atomic_write_text, read_json
    from lib.sweep.bench import combo_dir

    out = combo_dir(run_dir, backend, precision)
    for pj in (out / "points").glob("*.json"):
        rec = read_json(pj)
        rec["rounds"] = [r for r in rec["rounds"] if r["pass"] == 1]
        pj.write_text(json.dumps(rec))
    (out / "done.json").unlink()
    atomic_write_text(out / "pass1.done", "1\n")
    return out
