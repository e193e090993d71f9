"""Model registry: every ``<models_dir>/<folder>/config.yaml`` is a model, found without an import list.

``load.py`` beside the config defines ``build_model(config) -> torch.nn.Module`` (random weights: no
network). It is the one place user code runs, by design. Weights come from a local state-dict file,
read as data with ``torch.load(weights_only=True)`` and applied with strict key checking.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml

from .errors import ConfigError, ModelError, WeightsError
from .model_config import ModelConfig, parse_model_config

RANDOM_WEIGHTS_SEED = 0

__all__ = ["calibrate_batchnorm", "default_models_dir", "discover", "get_model", "list_models", "build_model", "load_weights"]


def default_models_dir() -> Path:
    """``$BENCHBOOK_MODELS_DIR`` or the repository's ``models/``."""
    env = os.environ.get("BENCHBOOK_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def _read_config(path: Path) -> ModelConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_model_config(raw, path)


def discover(models_dir: Path | str | None = None) -> dict[str, ModelConfig]:
    """All models under ``models_dir``; a malformed config or a duplicate name raises, naming the files."""
    root = Path(models_dir) if models_dir else default_models_dir()
    if not root.is_dir():
        raise ModelError(f"models folder {root} does not exist")
    found: dict[str, ModelConfig] = {}
    for cfg_path in sorted(root.glob("*/config.yaml")):
        cfg = _read_config(cfg_path)
        if cfg.name in found:
            raise ModelError(f"two models are named {cfg.name!r}: {found[cfg.name].path} and {cfg_path}; "
                             f"rename one (the 'name' field)")
        if not (cfg_path.parent / "load.py").is_file() and not (cfg_path.parent / "model.onnx").is_file():
            raise ModelError(f"{cfg_path.parent}: needs load.py (defining build_model(config)) or model.onnx")
        found[cfg.name] = cfg
    return found


def list_models(models_dir: Path | str | None = None) -> list[str]:
    return sorted(discover(models_dir))


def get_model(name: str, models_dir: Path | str | None = None) -> ModelConfig:
    """The model called ``name``; an unknown name lists the available ones."""
    models = discover(models_dir)
    if name not in models:
        avail = ", ".join(sorted(models)) or "(none)"
        raise ModelError(f"MODEL={name!r} is not a model here; available: {avail} "
                         f"(each is a folder with config.yaml + load.py under {Path(models_dir or default_models_dir())})")
    return models[name]


def build_model(cfg: ModelConfig, weights: str | Path | None = None):
    """Run the model's ``load.py`` to build it (eval mode, CPU), then apply ``weights`` if given."""
    load_py = cfg.folder / "load.py"
    if not load_py.is_file():
        raise ModelError(f"model {cfg.name!r} has no load.py ({load_py}); it can run on ONNX backends only")
    spec = importlib.util.spec_from_file_location(f"benchbook_models.{cfg.folder.name}", load_py)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        builder = getattr(module, "build_model")
    except AttributeError:
        raise ModelError(f"{load_py} must define build_model(config) -> torch.nn.Module") from None
    except Exception as e:
        raise ModelError(f"model {cfg.name!r}: {load_py} raised {type(e).__name__}: {e}") from e
    import torch

    # Seeded, so every process (export, each backend's kernel, the parity reference) builds the same
    # random weights; fork_rng leaves the caller's RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        try:
            model = builder(cfg)
        except Exception as e:
            raise ModelError(f"model {cfg.name!r}: build_model() in {load_py} raised {type(e).__name__}: {e}") from e
        if not isinstance(model, torch.nn.Module):
            raise ModelError(f"model {cfg.name!r}: build_model() returned {type(model).__name__}, "
                             f"not a torch.nn.Module")
        if weights:
            load_weights(model, weights, cfg.name)
        else:
            calibrate_batchnorm(model, cfg)
    return model.eval()


def calibrate_batchnorm(model, cfg: ModelConfig, passes: int = 4) -> int:
    """Set BatchNorm running statistics from seeded random inputs; returns how many layers were set.

    Freshly initialised BatchNorm layers are identities (mean 0, var 1), and with default random
    weights activations shrink layer after layer: EfficientNet-B1's logits come out near 1e-14,
    which FP16 flushes to zero and which makes any parity figure meaningless. Calibrated
    statistics keep every layer's output at unit scale, as trained weights would.
    """
    import torch

    from .inputs import make_inputs
    from .model_config import BATCH_DIM, Shape

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
    first = cfg.inputs[0]
    batch = max(8, first.example[first.dims.index(BATCH_DIM)])
    shape = Shape(tuple((d, next(s.example[s.dims.index(d)] for s in cfg.inputs if d in s.dims))
                        for d in cfg.shape_dims))
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i in range(passes):
            inputs = make_inputs(cfg, batch, shape, seed=10_000 + i)
            model(*[torch.from_numpy(inputs[s.name]) for s in cfg.inputs])
    model.train(was_training)
    return len(bns)


def load_weights(model, weights: str | Path, model_name: str = "model") -> None:
    """Apply a state dict from a local file, read as data only; errors name the file and the mismatch."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"WEIGHTS={str(weights)!r} does not exist (give a local state_dict file, e.g. a .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"WEIGHTS={str(path)!r} is not a loadable state dict "
                           f"(read with torch.load(weights_only=True)): {type(e).__name__}: {str(e)[:300]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # common checkpoint layout: {"state_dict": ..., "epoch": ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"WEIGHTS={str(path)!r} holds a {type(state).__name__}, not a state dict "
                           f"(a mapping of parameter names to tensors)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:5]) + (f" ... (+{len(keys) - 5})" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} keys of another shape: " + few(
                [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong]))
        raise WeightsError(f"WEIGHTS={str(path)!r} does not match model {model_name!r}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
