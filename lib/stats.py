"""Summary statistics and outlier rules, on raw per-iteration samples (ms).

Outliers are filtered for presentation only: the raw samples stay on disk, and every
table says which rule ran and how many samples it dropped. Percentiles use numpy's
default (linear interpolation between closest ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["OutlierRule", "parse_outlier_rule", "summarize", "bootstrap_ratio_ci", "PERCENTILES"]

PERCENTILES = (50, 90, 95, 99)
RULES = {"tukey": 1.5, "mad": 3.5, "none": 0.0}


@dataclass(frozen=True)
class OutlierRule:
    """``tukey``: outside [Q1 - k*IQR, Q3 + k*IQR] (k=1.5); ``mad``: |x - median| > k * 1.4826 * MAD
    (k=3.5); ``none``: keep everything."""

    name: str
    k: float

    @property
    def label(self) -> str:
        if self.name == "none":
            return "none (all samples kept)"
        if self.name == "tukey":
            return f"Tukey fences: outside [Q1 - {self.k:g}×IQR, Q3 + {self.k:g}×IQR]"
        return f"MAD: |x - median| > {self.k:g} × 1.4826 × MAD"

    def keep_mask(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if self.name == "none" or len(x) < 4:
            return np.ones(len(x), dtype=bool)
        if self.name == "tukey":
            q1, q3 = np.percentile(x, [25, 75])
            iqr = q3 - q1
            return (x >= q1 - self.k * iqr) & (x <= q3 + self.k * iqr)
        med = np.median(x)
        mad = 1.4826 * np.median(np.abs(x - med))
        if mad == 0:
            return np.ones(len(x), dtype=bool)
        return np.abs(x - med) <= self.k * mad


def parse_outlier_rule(text: str) -> OutlierRule:
    """'tukey', 'tukey:3', 'mad', 'mad:5' or 'none'."""
    raw = str(text).strip().lower()
    name, _, k = raw.partition(":")
    valid = "tukey, tukey:<k>, mad, mad:<k> or none (default tukey = 1.5×IQR)"
    if name not in RULES:
        raise ConfigError(f"OUTLIERS={text!r} is not a rule; use {valid}")
    if name == "none":
        if k:
            raise ConfigError(f"OUTLIERS={text!r}: 'none' takes no factor; use {valid}")
        return OutlierRule("none", 0.0)
    try:
        factor = float(k) if k else RULES[name]
    except ValueError:
        raise ConfigError(f"OUTLIERS={text!r}: factor {k!r} is not a number; use {valid}") from None
    if not factor > 0:
        raise ConfigError(f"OUTLIERS={text!r}: the factor must be > 0; use {valid}")
    return OutlierRule(name, factor)


def summarize(ms: np.ndarray, rule: OutlierRule | None = None) -> dict:
    """Median, p90/p95/p99, mean, std, CV, min, max over the kept samples; raw count and dropped count.

    ``p99_raw`` and ``max_raw`` are over every sample, so a filtered table never hides the tail.
    """
    x = np.asarray(ms, dtype=float)
    if len(x) == 0:
        return {"n": 0, "dropped": 0}
    keep = rule.keep_mask(x) if rule else np.ones(len(x), dtype=bool)
    k = x[keep]
    mean = float(k.mean())
    std = float(k.std(ddof=1)) if len(k) > 1 else 0.0
    p = np.percentile(k, PERCENTILES)
    return {
        "n": int(len(x)), "dropped": int((~keep).sum()),
        "median_ms": float(p[0]), "p90_ms": float(p[1]), "p95_ms": float(p[2]), "p99_ms": float(p[3]),
        "mean_ms": mean, "std_ms": std, "cv": std / mean if mean > 0 else float("nan"),
        "min_ms": float(k.min()), "max_ms": float(k.max()),
        "p99_raw_ms": float(np.percentile(x, 99)), "max_raw_ms": float(x.max()),
    }


def bootstrap_ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """median(a) / median(b) with a percentile-bootstrap confidence interval (resampling each side)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(n_boot, len(a)))
    ib = rng.integers(0, len(b), size=(n_boot, len(b)))
    ratios = np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
    lo, hi = np.percentile(ratios, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)
