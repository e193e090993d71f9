"""lib.measure.accuracy on a generated labelled set (3 colours x 4 images, written with PIL) and the tiny CNN with
weights trained on it for a second: the preprocessing is torchvision's, PyTorch and ONNX Runtime give
identical figures, and top-1 is what the model actually predicts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, TINY_LOAD_PY, Log, write_model
from lib.artifacts.export import ensure_onnx
from lib.backends import Artifacts, EngineSpec, make_engine
from lib.common.errors import ConfigError
from lib.common.stats import parse_outlier_rule
from lib.config.models import build_model, get_model
from lib.measure import accuracy
from lib.results.run import Run

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
PREP = {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def write_images(root: Path) -> Path:
    """root/<colour>/<i>.png|jpg: noisy solid colours of several sizes and aspect ratios."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, rgb in COLOURS.items():
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate([(48, 40), (40, 64), (36, 36), (70, 50)]):
            a = np.clip(np.array(rgb) + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / (f"{i}.png" if i % 2 else f"{i}.jpg"), quality=95)
    (root / "notes.txt").write_text("not a class")  # files beside the class folders are ignored
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("acc") / "data")


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw.update(name="tiny_acc", preprocessing=PREP)
    path = write_model(tmp_path_factory.mktemp("acc-models"), "tiny_acc", raw)
    return get_model("tiny_acc", path.parent.parent)


def _torchvision_batch(images: accuracy.LabelledImages) -> torch.Tensor:
    """The same images prepared by torchvision, independently of lib.measure.accuracy."""
    from PIL import Image
    from torchvision import transforms

    t = transforms.Compose([transforms.Resize(PREP["resize"]), transforms.CenterCrop(PREP["crop"]),
                            transforms.ToTensor(), transforms.Normalize(PREP["mean"], PREP["std"])])
    return torch.stack([t(Image.open(p).convert("RGB")) for p in images.paths])


@pytest.fixture(scope="module")
def weights(image_model, data_dir, tmp_path_factory) -> Path:
    """The tiny CNN trained on the colours for 60 Adam steps (about a second), saved as a state dict."""
    images = accuracy.find_images(data_dir)
    x, y = _torchvision_batch(images), torch.from_numpy(images.labels)
    model = build_model(image_model).train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("acc-weights") / "tiny_acc.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def onnx_files(image_model, weights, tmp_path_factory):
    return {p: r.path for p, r in ensure_onnx(image_model, tmp_path_factory.mktemp("acc-cache") / "onnx",
                                              weights=weights, log=Log()).items()}


def _engine(backend, cfg, onnx, weights):
    return make_engine(backend, EngineSpec(cfg, "fp32", "cpu", Artifacts(onnx=onnx, weights=weights)))


# --- the data folder ------------------------------------------------------------------------------------
def test_find_images(data_dir):
    images = accuracy.find_images(data_dir)
    assert images.classes == ["blue", "green", "red"] and images.class_source == "sorted folder names"
    assert len(images) == 12 and images.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert all(p.parent.name == images.classes[lab] for p, lab in zip(images.paths, images.labels))


def test_classes_txt_sets_the_label_order(tmp_path):
    data = write_images(tmp_path / "data")
    (data / "classes.txt").write_text("cyan\ngreen\nblue\nred\n")
    images = accuracy.find_images(data)
    assert images.class_source == "classes.txt" and images.classes == ["cyan", "green", "blue", "red"]
    assert sorted(set(images.labels.tolist())) == [1, 2, 3]
    (data / "classes.txt").write_text("green\nblue\n")
    with pytest.raises(ConfigError, match="red are not listed in"):
        accuracy.find_images(data)


@pytest.mark.parametrize("layout, words", [
    ("missing", "is not a folder"),
    ("flat", "has no class sub-folders"),
    ("empty-classes", "no images in its class sub-folders"),
])
def test_bad_data_folders_say_what_to_fix(tmp_path, layout, words):
    root = tmp_path / "data"
    if layout == "flat":
        root.mkdir()
        (root / "a.jpg").write_bytes(b"")
    elif layout == "empty-classes":
        (root / "cat").mkdir(parents=True)
        (root / "cat" / "readme.txt").write_text("")
    with pytest.raises(ConfigError) as e:
        accuracy.find_images(root)
    assert str(e.value).startswith("DATA=") and words in str(e.value)


# --- the model side ---------------------------------------------------------------------------------------
def test_preprocessing_is_torchvisions(image_model, data_dir):
    images = accuracy.find_images(data_dir)
    geo = accuracy.image_geometry(image_model)
    ours = np.stack([accuracy.preprocess(p, geo) for p in images.paths])
    assert ours.shape == (12, 3, 32, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _torchvision_batch(images).numpy(), atol=1e-5)


def test_check_data_refuses_models_it_cannot_score(data_dir, make_model, tiny_raw):
    model_root = make_model.root
    make_model("no_prep")  # dynamic height/width and no crop
    with pytest.raises(ConfigError, match="preprocessing.crop: needed"):
        accuracy.check_data(get_model("no_prep", model_root), data_dir)
    make_model("too_small", preprocessing={"crop": 8})
    with pytest.raises(ConfigError, match=r"preprocessing.crop: 8 is outside the profile of height \(16..64\)"):
        accuracy.check_data(get_model("too_small", model_root), data_dir)
    two_out = copy.deepcopy(tiny_raw)
    two_out.update(name="two_out", preprocessing=PREP, top_k_output=None,
                   outputs=[{"name": "a", "dims": ["batch"]}, {"name": "b", "dims": ["batch"]}])
    make_model("two_out", config=two_out)
    with pytest.raises(ConfigError, match="top_k_output: needed for accuracy"):
        accuracy.check_data(get_model("two_out", model_root), data_dir)
    if (REPO / "models" / "bert_base").is_dir():
        with pytest.raises(ConfigError, match="one image input; 'bert_base' has 2 inputs"):
            accuracy.check_data(get_model("bert_base"), data_dir)
    assert len(accuracy.check_data(get_model("efficientnet_b1"), data_dir)) == 12


def test_torch_and_ort_agree_and_top1_is_what_the_model_predicts(image_model, data_dir, weights, onnx_files):
    images = accuracy.find_images(data_dir)
    model = build_model(image_model, weights)
    with torch.inference_mode():
        expected = model(_torchvision_batch(images)).argmax(1).numpy()
    results = {}
    for backend in ("torch", "ort"):
        with _engine(backend, image_model, onnx_files, weights) as engine:
            results[backend] = accuracy.evaluate(engine, image_model, data_dir, batch=5, log=Log())  # 5+5+2(padded)
    a, b = results["torch"], results["ort"]
    assert a["predictions"] == b["predictions"] == expected.tolist()
    assert a["top1"] == b["top1"] == float(np.mean(expected == images.labels))
    assert a["top5"] == b["top5"] and a["top1_correct"] == b["top1_correct"]
    assert a["top1"] == 1.0  # trained on these very colours
    assert a["images"] == 12 and a["batch"] == 5 and a["shape"] == "32x32" and a["classes"] == 3
    assert a["per_class"]["red"] == {"images": 4, "top1": 1.0}


def test_labels_from_classes_txt_change_the_score(image_model, weights, onnx_files, tmp_path):
    """The same images, labelled in another order: top-1 drops to exactly the images whose predicted index
    still equals their label, on both backends."""
    data = write_images(tmp_path / "data")
    (data / "classes.txt").write_text("green\nblue\nred\n")  # blue <-> green swapped
    images = accuracy.find_images(data)
    model = build_model(image_model, weights)
    with torch.inference_mode():
        logits = model(_torchvision_batch(images)).numpy()
    want1 = float(np.mean(logits.argmax(1) == images.labels))
    want5 = float(np.mean([lab in np.argsort(-row, kind="stable")[:5] for row, lab in zip(logits, images.labels)]))
    assert want1 == pytest.approx(4 / 12)  # only red is still right
    for backend in ("torch", "ort"):
        with _engine(backend, image_model, onnx_files, weights) as engine:
            r = accuracy.evaluate(engine, image_model, data, batch=4, log=Log())
        assert (r["top1"], r["top5"], r["class_source"]) == (want1, want5, "classes.txt"), backend


def test_record_writes_the_file_and_never_raises(image_model, data_dir, weights, onnx_files, tmp_path):
    with _engine("ort", image_model, onnx_files, weights) as engine:
        ok = accuracy.record(engine, image_model, data_dir, 16, tmp_path / "ok", log=Log())
        bad = accuracy.record(engine, image_model, tmp_path / "nope", 16, tmp_path / "bad", log=Log())
    assert json.loads((tmp_path / "ok" / "accuracy.json").read_text())["top1"] == ok["top1"] == 1.0
    assert ok["batch"] == 12 or ok["batch"] == 16  # clipped to the profile's max batch (16)
    saved = json.loads((tmp_path / "bad" / "accuracy.json").read_text())
    assert saved == bad and bad["status"] == "error" and "is not a folder" in bad["error"]


def test_accuracy_table_reads_the_run(image_model, data_dir, weights, onnx_files, tmp_path):
    run_dir = tmp_path / "run"
    combos = [{"backend": "torch", "precision": "fp32"}, {"backend": "ort", "precision": "fp32"},
              {"backend": "ort", "precision": "fp16"}]
    for backend in ("torch", "ort"):
        with _engine(backend, image_model, onnx_files, weights) as engine:
            accuracy.record(engine, image_model, data_dir, 4, run_dir / "bench" / f"{backend}-fp32", log=Log())
    (run_dir / "bench" / "ort-fp16").mkdir(parents=True)
    (run_dir / "bench" / "ort-fp16" / "accuracy.json").write_text(json.dumps({"status": "error", "error": "boom"}))
    points = pd.DataFrame([{"backend": "ort", "precision": "fp32", "batch": 4, "shape": "32x32", "mode": "device",
                            "median_ms": 2.0, "items_per_s": 2000.0},
                           {"backend": "ort", "precision": "fp32", "batch": 1, "shape": "32x32", "mode": "device",
                            "median_ms": 1.0, "items_per_s": 1000.0}])
    run = Run(path=run_dir, params={"weights": str(weights)}, plan={"combos": combos}, rule=parse_outlier_rule("none"),
              points=points)
    table = accuracy.accuracy_table(run)
    assert table["backend"].tolist() == ["torch", "ort", "ort"]
    assert table["top-1"].tolist()[:2] == [1.0, 1.0] and np.isnan(table["top-1"].iloc[2])
    assert table["top-1 agreement with torch/fp32"].tolist()[:2] == [1.0, 1.0]
    assert np.isnan(table.loc[0, "items/s"]) and table.loc[1, "items/s"] == 2000.0  # ort at the evaluated batch 4
    assert table.loc[2, "note"] == "boom"
    assert accuracy.accuracy_table(Run(path=tmp_path / "none", params={}, plan={"combos": combos},
                                       rule=parse_outlier_rule("none"))).empty


@pytest.mark.slow
@pytest.mark.skipif("data" not in __import__("lib.config.params", fromlist=["RunParams"]).RunParams.__dataclass_fields__,
                    reason="DATA is not plumbed through the Makefile, params and bench yet (issue 7)")
def test_report_shows_accuracy(image_model, data_dir, weights, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BENCHBOOK_MODELS_DIR", None)
    reports = tmp_path / "reports"
    r = subprocess.run(["make", "report", "MODEL=tiny_acc", f"MODELS_DIR={image_model.folder.parent}",
                        f"WEIGHTS={weights}", f"DATA={data_dir}", "ITERS=3", "DURATION=0.3",
                        f"REPORTS_DIR={reports}", f"CACHE_DIR={tmp_path / 'cache'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = next((reports / "tiny_acc").iterdir())
    found = sorted(run.glob("bench/*/accuracy.json"))
    assert len(found) >= 2
    for f in found:
        assert json.loads(f.read_text())["top1"] == 1.0
    assert "Accuracy on your data" in (run / "report.html").read_text()
