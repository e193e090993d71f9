"""Accuracy on your own labelled images (``DATA=folder``): top-1 / top-5 per backend and precision.

``DATA`` is an ImageFolder layout: one sub-folder per class, images inside (any depth)::

    DATA/
      cat/ 001.jpg 002.png ...
      dog/ ...
      classes.txt    # optional: every class name, one a line, in the model's output order

A label is the position of its folder's name in ``classes.txt`` when that file exists, else in the
sorted list of sub-folders (torchvision's ImageFolder rule, which also gives ImageNet's standard index
for its synset folders ``n01440764`` ...). With fewer folders than the model has classes, give
``classes.txt``: sorted positions among a subset do not match the model's classes.

Images are read with PIL (nothing is downloaded) and prepared from the model config's
``preprocessing: {resize, crop, mean, std}`` as torchvision's classic evaluation transform does:
shorter side resized to ``resize`` (bilinear), centre crop ``crop`` x ``crop``, scaled to [0, 1],
normalised per channel. They then run through the very engine that was benchmarked (any backend,
any precision) in batches of one size; the last batch is padded with copies of its last image, whose
outputs are dropped, so an engine is bound once. Accuracy is scored on ``top_k_output`` (or the
only output).

Functions:

* ``check_data(cfg, data_dir)``: validation for the plan step (seconds; reads no pixels).
* ``evaluate(engine, cfg, data_dir, batch)``: the figures, as a dict; raises on a problem.
* ``record(engine, cfg, data_dir, batch, combo_dir)``: for the benchmark runner; writes
  ``<combo_dir>/accuracy.json`` and never raises (a failure is recorded with its reason).
* ``accuracy_table(run)``: the report's table, one row per backend/precision, with speed beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import BenchbookError, ConfigError
from ..config.model_config import BATCH_DIM, InputSpec, ModelConfig

__all__ = ["IMAGE_EXTENSIONS", "image_geometry", "LabelledImages", "find_images", "check_data", "image_input", "scored_output",
           "preprocess", "evaluate", "record", "accuracy_table", "ACCURACY_FILE"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
ACCURACY_FILE = "accuracy.json"
_CHANNEL_NAMES = ("channels", "channel", "c")


@dataclass
class LabelledImages:
    root: Path
    classes: list[str]      # label -> class name
    paths: list[Path]
    labels: np.ndarray      # int64, one per path
    class_source: str       # "classes.txt" or "sorted folder names"

    def __len__(self) -> int:
        return len(self.paths)


def find_images(data_dir: Path | str) -> LabelledImages:
    """Every image under ``data_dir/<class>/`` with its label; errors name DATA and what to fix."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"DATA={str(data_dir)!r} is not a folder; give a folder of labelled images, "
                          f"one sub-folder per class (DATA/<class>/<image>.jpg)")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise ConfigError(f"DATA={str(root)!r} has no class sub-folders; expected DATA/<class>/<image>.jpg "
                          f"(one sub-folder per class)")
    listing = root / "classes.txt"
    if listing.is_file():
        classes = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        if len(set(classes)) != len(classes):
            raise ConfigError(f"{listing}: class names repeat")
        unknown = [f for f in folders if f not in classes]
        if unknown:
            raise ConfigError(f"DATA={str(root)!r}: sub-folder(s) {', '.join(unknown[:5])} are not listed in "
                              f"{listing} (list every class, one a line, in the model's output order)")
        source = "classes.txt"
    else:
        classes, source = folders, "sorted folder names"
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for folder in folders:
        files = sorted(p for p in (root / folder).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        paths += files
        labels += [index[folder]] * len(files)
    if not paths:
        raise ConfigError(f"DATA={str(root)!r}: no images in its class sub-folders "
                          f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return LabelledImages(root, classes, paths, np.asarray(labels, dtype=np.int64), source)


# --- the model side: which input takes the images, which output is scored, how images are prepared ----
def image_input(cfg: ModelConfig) -> tuple[InputSpec, str]:
    """The model's one image input and its layout, "NCHW" or "NHWC"."""
    if len(cfg.inputs) != 1:
        raise ConfigError(f"DATA: accuracy needs a model with one image input; {cfg.name!r} has "
                          f"{len(cfg.inputs)} inputs ({', '.join(s.name for s in cfg.inputs)})")
    spec = cfg.inputs[0]
    if len(spec.dims) != 4 or spec.dims[0] != BATCH_DIM or not spec.dtype.startswith(("float", "bfloat")):
        raise ConfigError(f"DATA: accuracy needs an image input [batch, channels, height, width] of floats; "
                          f"{cfg.path} inputs[0] is {spec.name!r} {spec.dtype} {list(spec.dims)}")
    names = [d.lower() for d in spec.dims]
    if names[1] in _CHANNEL_NAMES or (names[3] not in _CHANNEL_NAMES and spec.runtime[1] in (1, 3)):
        layout, channels = "NCHW", spec.runtime[1]
    elif names[3] in _CHANNEL_NAMES or spec.runtime[3] in (1, 3):
        layout, channels = "NHWC", spec.runtime[3]
    else:
        raise ConfigError(f"DATA: cannot tell the channel dim of {cfg.path} inputs[0] dims {list(spec.dims)}; "
                          f"name it 'channels'")
    if channels not in (1, 3):
        raise ConfigError(f"DATA: accuracy reads RGB or greyscale images; {cfg.path} inputs[0] has "
                          f"{channels if channels != -1 else 'a dynamic number of'} channels")
    return spec, layout


def scored_output(cfg: ModelConfig) -> str:
    """The output scored for top-k: ``top_k_output``, or the only output."""
    if cfg.top_k_output:
        return cfg.top_k_output
    if len(cfg.outputs) == 1:
        return cfg.outputs[0].name
    raise ConfigError(f"{cfg.path}: top_k_output: needed for accuracy (which of "
                      f"{', '.join(o.name for o in cfg.outputs)} holds the class scores?)")


def image_geometry(cfg: ModelConfig) -> dict:
    """resize, crop (height, width), mean, std, channels and layout, checked against the input's dims."""
    spec, layout = image_input(cfg)
    prep = dict(cfg.preprocessing or {})
    h_i, w_i = (2, 3) if layout == "NCHW" else (1, 2)
    channels = spec.runtime[1] if layout == "NCHW" else spec.runtime[3]
    fixed = (spec.runtime[h_i], spec.runtime[w_i])
    if "crop" in prep:
        crop = (prep["crop"], prep["crop"])
    elif fixed[0] != -1 and fixed[1] != -1:
        crop = fixed
    else:
        raise ConfigError(f"{cfg.path}: preprocessing.crop: needed for accuracy, as the input's height and width "
                          f"are dynamic (e.g. preprocessing: {{resize: 256, crop: 224, mean: [...], std: [...]}})")
    for k, (f, c) in enumerate(zip(fixed, crop)):
        dim = spec.dims[(h_i, w_i)[k]]
        if f != -1 and f != c:
            raise ConfigError(f"{cfg.path}: preprocessing.crop: {c}, but the input's {dim} is fixed at {f}")
        if f == -1:
            lo, hi = cfg.profile_range(dim)
            if not lo <= c <= hi:
                raise ConfigError(f"{cfg.path}: preprocessing.crop: {c} is outside the profile of {dim} "
                                  f"({lo}..{hi})")
    resize = prep.get("resize", max(crop))
    mean = prep.get("mean", [0.0] * channels)
    std = prep.get("std", [1.0] * channels)
    for key, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, channels):
            raise ConfigError(f"{cfg.path}: preprocessing.{key}: {len(v)} values for {channels} channels")
    if resize < min(crop):
        raise ConfigError(f"{cfg.path}: preprocessing.resize: {resize} is smaller than the crop {crop[0]}")
    return {"resize": int(resize), "crop": (int(crop[0]), int(crop[1])), "channels": int(channels),
            "mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32), "layout": layout,
            "input": spec.name, "dtype": spec.dtype}


def check_data(cfg: ModelConfig, data_dir: Path | str) -> LabelledImages:
    """Everything about DATA that can be checked before a run (no image is decoded)."""
    images = find_images(data_dir)
    image_geometry(cfg)
    scored_output(cfg)
    return images


def preprocess(path: Path | str, geometry: dict) -> np.ndarray:
    """One image as the model's input, HWC or CHW float32 (torchvision's Resize(int) + CenterCrop +
    ToTensor + Normalize, on PIL)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB" if geometry["channels"] == 3 else "L")
        w, h = im.size
        size = geometry["resize"]
        if (w <= h and w != size) or (h < w and h != size):  # shorter side -> size, aspect kept (torchvision)
            if w <= h:
                nw, nh = size, int(size * h / w)
            else:
                nw, nh = int(size * w / h), size
            im = im.resize((nw, nh), Image.BILINEAR)
        w, h = im.size
        ch, cw = geometry["crop"]
        if ch > h or cw > w:  # torchvision pads; a resize at least as large as the crop never gets here
            raise BenchbookError(f"{path}: {w}x{h} after resizing is smaller than the crop {cw}x{ch}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        im = im.crop((left, top, left + cw, top + ch))
        a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    a = (a - geometry["mean"]) / geometry["std"]
    if geometry["layout"] == "NCHW":
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a, dtype=np.float32)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (ties: the lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def evaluate(engine, cfg: ModelConfig, data_dir: Path | str, batch: int, log=print) -> dict:
    """Top-1 / top-5 of ``engine`` (loaded, any backend) on DATA, in batches of ``batch`` images."""
    images = find_images(data_dir)
    geo = image_geometry(cfg)
    out_name = scored_output(cfg)
    lo, hi = cfg.profile_range(BATCH_DIM)
    batch = max(lo, min(int(batch), hi))
    np_dtype = np.float16 if geo["dtype"] == "float16" else np.float32
    n = len(images)
    scores = None
    t0 = time.perf_counter()
    run_s = 0.0
    for start in range(0, n, batch):
        chunk = [preprocess(p, geo) for p in images.paths[start:start + batch]]
        real = len(chunk)
        chunk += [chunk[-1]] * (batch - real)  # one bound shape: pad, then drop the padding's outputs
        x = {geo["input"]: np.stack(chunk).astype(np_dtype)}
        t1 = time.perf_counter()
        if start == 0:
            engine.bind(x)
            dims = cfg.inputs[0].dims
            shape = "x".join(str(x[geo["input"]].shape[dims.index(d)]) for d in cfg.shape_dims) or "static"
        out = engine.infer(x)
        run_s += time.perf_counter() - t1
        if out_name not in out:
            raise BenchbookError(f"{engine.label}: no output {out_name!r} (it returned {', '.join(out)})")
        s = np.asarray(out[out_name], dtype=np.float32).reshape(batch, -1)[:real]
        if scores is None:
            scores = np.empty((n, s.shape[1]), dtype=np.float32)
        scores[start:start + real] = s
    num_classes = scores.shape[1]
    if len(images.classes) > num_classes:
        raise ConfigError(f"DATA={str(images.root)!r} has {len(images.classes)} classes ({images.class_source}) "
                          f"but the model's output {out_name!r} scores {num_classes}")
    k5 = min(5, num_classes)
    top = _topk(scores, k5)
    correct1 = top[:, 0] == images.labels
    correct5 = (top == images.labels[:, None]).any(axis=1)
    per_class = {c: {"images": int((images.labels == i).sum()),
                     "top1": float(correct1[images.labels == i].mean()) if (images.labels == i).any() else None}
                 for i, c in enumerate(images.classes)}
    notes = []
    if len(images.classes) < num_classes and images.class_source != "classes.txt":
        notes.append(f"{len(images.classes)} class folders for {num_classes} model classes: labels are positions "
                     f"in the sorted folder names; add DATA/classes.txt if they are not the model's first classes")
    from ..config.models import is_given_onnx

    result = {
        "status": "ok", "backend": engine.backend, "precision": engine.spec.precision, "data": str(images.root),
        "images": n, "classes": len(images.classes), "class_source": images.class_source,
        "model_classes": num_classes, "output": out_name, "batch": batch, "shape": shape,
        "weights": str(engine.spec.artifacts.weights or ""), "given_onnx": is_given_onnx(cfg),
        "top1": float(correct1.mean()), "top5": float(correct5.mean()), "top5_k": k5,
        "top1_correct": int(correct1.sum()), "top5_correct": int(correct5.sum()),
        "preprocessing": {"resize": geo["resize"], "crop": list(geo["crop"]), "mean": geo["mean"].tolist(),
                          "std": geo["std"].tolist(), "layout": geo["layout"]},
        "eval_s": round(time.perf_counter() - t0, 3), "inference_s": round(run_s, 3),
        "per_class": per_class, "notes": notes,
        # top-1 per image (in file order) and the files, so backends can be compared image by image
        "predictions": top[:, 0].tolist(), "labels": images.labels.tolist(),
        "files": [str(p.relative_to(images.root)) for p in images.paths],
    }
    log(f"[{engine.label}] accuracy on {n} images ({len(images.classes)} classes): top-1 {result['top1']:.2%}, "
        f"top-{k5} {result['top5']:.2%} ({result['eval_s']:.1f} s)")
    return result


def record(engine, cfg: ModelConfig, data_dir: Path | str, batch: int, combo_dir: Path | str, log=print) -> dict:
    """``evaluate`` into ``<combo_dir>/accuracy.json``; a failure is recorded there (status "error") and
    logged, never raised, so the benchmark's numbers stand either way."""
    from ..common.cache import atomic_write_json

    try:
        result = evaluate(engine, cfg, data_dir, batch, log=log)
    except Exception as e:  # recorded like a failed point
        result = {"status": "error", "backend": engine.backend, "precision": engine.spec.precision,
                  "data": str(data_dir), "error": f"{type(e).__name__}: {e}"[:2000]}
        log(f"[{engine.label}] accuracy FAILED: {result['error'][:300]}")
    atomic_write_json(Path(combo_dir) / ACCURACY_FILE, result)
    return result


def accuracy_table(run):
    """One row per backend/precision that has ``accuracy.json``: top-1, top-5, images, agreement with the
    first backend's top-1 predictions, and speed at the evaluated batch size (device-resident median
    and items/s) when that batch was benchmarked. Empty when the run had no DATA."""
    import pandas as pd

    from ..common.cache import read_json

    rows, base = [], None
    for combo in run.plan.get("combos", []):
        b, p = combo["backend"], combo["precision"]
        path = Path(run.path) / "bench" / f"{b}-{p}" / ACCURACY_FILE
        if not path.exists():
            continue
        r = read_json(path)
        row = {"backend": b, "precision": p}
        if r.get("status") != "ok":
            row.update({"top-1": np.nan, "top-5": np.nan, "images": np.nan, "note": r.get("error", "failed")})
            rows.append(row)
            continue
        preds = np.asarray(r["predictions"])
        if base is None:
            base = (f"{b}/{p}", preds)
        agree = float(np.mean(preds == base[1])) if len(preds) == len(base[1]) else np.nan
        row.update({"top-1": r["top1"], "top-5": r["top5"], "images": r["images"], "classes": r["classes"],
                    "batch": r["batch"], f"top-1 agreement with {base[0]}": agree,
                    "median ms (device)": np.nan, "items/s": np.nan})
        pts = run.points
        if not pts.empty:
            sel = pts[(pts["backend"] == b) & (pts["precision"] == p) & (pts["batch"] == r["batch"])
                      & (pts["shape"] == r.get("shape", "static")) & (pts["mode"] == "device")]
            if len(sel):
                row["median ms (device)"] = float(sel["median_ms"].iloc[0])
                row["items/s"] = float(sel["items_per_s"].iloc[0])
        notes = list(r.get("notes", []))
        if r.get("top5_k", 5) < 5:
            notes.append(f"top-5 is top-{r['top5_k']}: the model scores {r['top5_k']} classes")
        if not r.get("weights") and not r.get("given_onnx"):
            notes.append("random weights: accuracy is at chance level; give WEIGHTS=<state_dict.pth>")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)
