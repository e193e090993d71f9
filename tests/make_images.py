"""A small labelled image folder from seeded noise: ``<root>/<class>/<i>.png``, for INT8 calibration (CALIB)
and accuracy (DATA) on machines without a data set.

    python tests/make_images.py /tmp/images [--classes 4] [--per-class 6] [--size 256x320]

Each class is noise around its own base colour (so a trained model could tell them apart); sizes vary a
little per image so resizing and cropping are exercised. Seeded: the same folder every time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_labelled_images(root: Path | str, classes: int = 4, per_class: int = 6, size: tuple[int, int] = (256, 320),
                          seed: int = 0) -> Path:
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(30, 225, 3)
        for i in range(per_class):
            h, w = size[0] + 8 * (i % 3), size[1] - 8 * (i % 2)
            a = np.clip(base + rng.normal(0, 45, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(folder / f"{i}.png")
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--size", default="256x320", help="height x width of the first image of a class")
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    root = write_labelled_images(a.root, a.classes, a.per_class, (h, w))
    print(f"{root}: {a.classes} classes x {a.per_class} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
