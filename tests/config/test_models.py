"""lib.config.models: discovery of model folders, building through load.py (seeded, BatchNorm calibrated) and
WEIGHTS files (read as data, strict keys), with errors that name the model, the file and the cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.common.errors import ConfigError, ModelError, WeightsError
from lib.config.inputs import make_inputs
from lib.config.models import (build_model, calibrate_batchnorm, default_models_dir, discover, get_model, list_models,
                               load_weights)

from conftest import FIXTURES, MODELS, TINY_LOAD_PY

SHIPPED = {"efficientnet_b1", "mobilenet_v2", "resnet50"}


def _forward(model, cfg, batch=2, shape=None, seed=0):
    shape = shape or cfg.shapes[0]
    x = make_inputs(cfg, batch, shape, seed)
    with torch.no_grad():
        return model(*[torch.from_numpy(x[s.name]) for s in cfg.inputs]).numpy()


# --- discovery ------------------------------------------------------------------------------------------
def test_discover_finds_the_shipped_models():
    assert default_models_dir() == MODELS
    found = discover()
    assert SHIPPED <= set(found)
    assert set(found) == {p.parent.name for p in MODELS.glob("*/config.yaml")}  # every folder with a config
    for name, cfg in found.items():
        assert cfg.name == name and cfg.path == MODELS / name / "config.yaml"
    assert list_models() == sorted(found)


def test_discover_finds_the_fixture():
    assert list(discover(FIXTURES)) == ["tiny_cnn"]
    assert get_model("tiny_cnn", str(FIXTURES)).folder == FIXTURES / "tiny_cnn"


def test_models_dir_from_environment(monkeypatch):
    monkeypatch.setenv("BENCHBOOK_MODELS_DIR", str(FIXTURES))
    assert default_models_dir() == FIXTURES and list_models() == ["tiny_cnn"]


def test_missing_models_dir(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        discover(tmp_path / "nope")


def test_folder_without_config_is_ignored(make_model):
    make_model("good")
    (make_model.root / "notes").mkdir()
    (make_model.root / "notes" / "README.md").write_text("not a model")
    assert list_models(make_model.root) == ["good"]


def test_duplicate_names_name_both_files(make_model):
    a = make_model("first", name="same")
    b = make_model("second", name="same")
    with pytest.raises(ModelError) as e:
        discover(make_model.root)
    msg = str(e.value)
    assert "'same'" in msg and str(a) in msg and str(b) in msg


def test_folder_needs_load_py_or_onnx(make_model):
    make_model("no_code", load_py=None)
    with pytest.raises(ModelError, match=r"no_code: needs load.py"):
        discover(make_model.root)
    (make_model.root / "no_code" / "model.onnx").write_bytes(b"")
    assert "no_code" in discover(make_model.root)


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ModelError) as e:
        get_model("resnet5")
    msg = str(e.value)
    assert "'resnet5'" in msg and all(n in msg for n in SHIPPED)
    with pytest.raises(ModelError, match=r"available: tiny_cnn"):
        get_model("nope", FIXTURES)


def test_model_named_by_its_folder_points_to_its_name(make_model):
    """Issue 14: MODEL is the config's name: field; naming the folder instead says which name to use."""
    make_model("my_folder", name="tiny_renamed")
    with pytest.raises(ModelError) as e:
        get_model("my_folder", make_model.root)
    assert "MODEL=tiny_renamed?" in str(e.value) and "name: field" in str(e.value)


def test_malformed_config_fails_discovery(make_model):
    make_model("good")
    path = make_model("bad", top_k_output="nope")
    with pytest.raises(ConfigError, match=str(path)):
        discover(make_model.root)


# --- building -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("load_py, words", [
    ("raise RuntimeError('cannot import the weights package')\n",
     ["model 'broken'", "{load_py} raised RuntimeError", "cannot import the weights package"]),
    ("import no_such_module_here\n", ["model 'broken'", "{load_py}", "ModuleNotFoundError", "no_such_module_here"]),
    ("def build_model(config):\n    raise ValueError('bad hidden size 7')\n",
     ["model 'broken'", "build_model() in {load_py} raised ValueError", "bad hidden size 7"]),
    ("def build_model(config):\n    return 'a string'\n", ["model 'broken'", "returned str, not a torch.nn.Module"]),
    ("def build_modle(config):\n    pass\n", ["{load_py} must define build_model(config)"]),
    ("import torch\ntorch.nn.NoSuchLayer\n", ["model 'broken'", "{load_py}", "AttributeError", "NoSuchLayer"]),
], ids=["import-raises", "import-missing-module", "build-raises", "build-returns-str", "no-build_model",
        "import-raises-AttributeError"])
def test_build_errors_name_model_and_cause(make_model, load_py, words):
    make_model("broken", load_py=load_py)
    cfg = get_model("broken", make_model.root)
    with pytest.raises(ModelError) as e:
        build_model(cfg)
    msg = str(e.value)
    for w in words:
        assert w.format(load_py=cfg.folder / "load.py") in msg, msg


UNSEEDED = """
import torch
from torch import nn


def build_model(config):  # no seed of its own: build_model must make it deterministic
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))
"""


def test_seeded_build_is_deterministic_and_leaves_the_callers_rng_alone(make_model):
    make_model("unseeded", load_py=UNSEEDED)
    cfg = get_model("unseeded", make_model.root)
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    a = build_model(cfg)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    b = build_model(cfg)
    assert not a.training and not b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(_forward(a, cfg), _forward(b, cfg))


def test_tiny_build(tiny, tiny_module):
    assert isinstance(tiny_module, torch.nn.Module) and not tiny_module.training
    out = _forward(tiny_module, tiny, batch=3, shape=tiny.parse_shape("40x24"))
    assert out.shape == (3, 10) and out.dtype == np.float32 and np.isfinite(out).all()


def test_calibrate_batchnorm_sets_running_stats(tiny):
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert calibrate_batchnorm(model, tiny) == 2
    bn = model[1]
    assert not torch.allclose(bn.running_mean, torch.zeros(8)) and not torch.allclose(bn.running_var, torch.ones(8))
    assert model.training  # the mode it had
    model.eval()
    with torch.no_grad():  # calibrated: the first BN's outputs are standardised on the calibration data
        x = torch.from_numpy(make_inputs(tiny, 8, tiny.shapes[0], seed=10_000)["image"])
        y = model[1](model[0](x))
    assert abs(float(y.mean())) < 0.2 and 0.7 < float(y.std()) < 1.3
    assert calibrate_batchnorm(nn.Linear(3, 3), tiny) == 0


def test_calibration_is_cached_per_weights_and_reused(tiny, make_model, tmp_path, monkeypatch):
    import lib.config.models as models

    cache = tmp_path / "cache"
    first = build_model(tiny, cache_dir=cache)
    files = list((cache / "calibration").glob("*.pt"))
    assert len(files) == 1
    calls = []
    real = models.calibrate_batchnorm
    monkeypatch.setattr(models, "calibrate_batchnorm", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_model(tiny, cache_dir=cache)  # read from the cache: not calibrated again, the same weights
    assert calls == []
    for (k, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert not torch.allclose(again[1].running_var, torch.ones(8))  # calibrated statistics, not fresh ones

    # other weights (a changed load.py): another entry, calibrated again
    other = make_model("tiny_other", load_py=TINY_LOAD_PY.replace("torch.manual_seed(0)", "torch.manual_seed(1)"))
    cfg = discover(make_model.root)["tiny_other"]
    build_model(cfg, cache_dir=cache)
    assert calls == [1] and len(list((cache / "calibration").glob("*.pt"))) == 2

    # a corrupt entry is replaced, never trusted
    files[0].write_bytes(b"not a tensor file")
    fresh = build_model(tiny, cache_dir=cache)
    assert calls == [1, 1]
    assert torch.equal(fresh[1].running_var, first[1].running_var)


def test_counting_only_skips_calibration(tiny, tmp_path):
    model = build_model(tiny, cache_dir=tmp_path, calibrate=False)
    assert torch.equal(model[1].running_var, torch.ones(8)) and not (tmp_path / "calibration").exists()


def test_efficientnet_b1_logits_have_a_sane_scale():
    """Without calibration, random-weight EfficientNet-B1 logits come out near 1e-14 (see calibrate_batchnorm)."""
    cfg = get_model("efficientnet_b1")
    model = build_model(cfg)
    out = _forward(model, cfg, batch=2)
    assert out.shape == (2, 1000) and np.isfinite(out).all()
    assert out.std() > 1e-3, out.std()
    assert out.std() < 1e3


# --- WEIGHTS --------------------------------------------------------------------------------------------
@pytest.fixture
def scaled_state(tiny_module):
    """The tiny model's state dict with every float tensor changed (so loading it is visible)."""
    return {k: (v * 2 + 0.5 if v.is_floating_point() else v.clone()) for k, v in tiny_module.state_dict().items()}


def test_weights_missing_file(tiny, tmp_path):
    with pytest.raises(WeightsError) as e:
        build_model(tiny, tmp_path / "nope.pth")
    assert "nope.pth" in str(e.value) and "does not exist" in str(e.value)


def test_weights_random_bytes(tiny, tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError) as e:
        build_model(tiny, path)
    assert str(path) in str(e.value) and "not a loadable state dict" in str(e.value)


@pytest.mark.parametrize("obj, kind", [([torch.zeros(3), torch.ones(2)], "list"), ({"w": 1.0}, "dict"),
                                       (torch.zeros(3), "Tensor")])
def test_weights_not_a_state_dict(tiny, tmp_path, obj, kind):
    path = tmp_path / "thing.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError) as e:
        build_model(tiny, path)
    msg = str(e.value)
    assert str(path) in msg and f"holds a {kind}, not a state dict" in msg


def test_weights_pickled_code_is_refused(tiny, tmp_path):
    """weights_only=True: a file that would run code when unpickled is not loaded."""
    path = tmp_path / "evil.pth"
    torch.save({"state": _Evil()}, path)
    with pytest.raises(WeightsError, match="not a loadable state dict"):
        build_model(tiny, path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_weights_key_mismatch_lists_the_keys(tiny, tmp_path, scaled_state):
    state = dict(scaled_state)
    del state["0.weight"]
    state["extra.bias"] = torch.zeros(2)
    state["7.weight"] = torch.zeros(10, 17)  # Linear(16, 10) expects (10, 16)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        build_model(tiny, path)
    msg = str(e.value)
    assert "'tiny_cnn'" in msg and str(path) in msg
    assert "1 missing keys: 0.weight" in msg
    assert "1 unexpected keys: extra.bias" in msg
    assert "1 keys of another shape: 7.weight (10, 17) vs (10, 16)" in msg


def test_weights_load(tiny, tmp_path, tiny_module, scaled_state):
    path = tmp_path / "w.pth"
    torch.save(scaled_state, path)
    model = build_model(tiny, path)
    got = model.state_dict()
    assert all(torch.equal(got[k], scaled_state[k]) for k in scaled_state)  # BN stats from the file, not calibrated
    assert not np.allclose(_forward(model, tiny), _forward(tiny_module, tiny))
    # the common checkpoint layout {"state_dict": ..., "epoch": ...} loads the same
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"state_dict": scaled_state, "epoch": 3}, ckpt)
    np.testing.assert_array_equal(_forward(build_model(tiny, ckpt), tiny), _forward(model, tiny))


def test_load_weights_directly(tiny_module, tmp_path, scaled_state):
    from torch import nn

    path = tmp_path / "w.pth"
    torch.save(scaled_state, path)
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    load_weights(fresh, path, "tiny_cnn")
    assert torch.equal(fresh.state_dict()["7.bias"], scaled_state["7.bias"])
    with pytest.raises(WeightsError, match="'other'"):
        load_weights(nn.Linear(2, 2), path, "other")


def test_a_broken_sibling_config_blocks_only_itself(make_model, tiny_raw):
    import subprocess
    import sys

    from conftest import REPO

    make_model("good")
    broken = make_model("broken", config="name: broken\ninputs: [\n")
    assert get_model("good", make_model.root).name == "good"  # before: the broken sibling's YAML error
    with pytest.raises(ConfigError) as e:
        get_model("broken", make_model.root)
    assert str(broken) in str(e.value)
    with pytest.raises(ModelError) as e:
        get_model("nope", make_model.root)
    assert "available: good; not usable: broken" in str(e.value)
    proc = subprocess.run([sys.executable, "-m", "lib.pipeline.cli", "models", "--models-dir", str(make_model.root)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("good ") and lines[1].startswith("broken") and "NOT USABLE" in lines[1]
    assert str(broken) in lines[1] and "not valid YAML" in lines[1]
