"""Evaluation report figures, built as matplotlib ``Figure`` objects (no pyplot state, no files:
the caller writes them, e.g. ``fig.savefig(path)`` at the figure's own dpi).

* `k_histogram`: the chosen K against the number of ground-truth classes per image.
* `sorted_scores`: per-image score (mIoU or covering), sorted.
* `best_worst_grid`: image, ground truth and prediction side by side for the
  best and the worst images; predicted segments take the colour of the class
  (or ground-truth region) they were matched to, so colours agree across panels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clasp_engine.evaluation.metrics import IGNORE

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float], dpi: int):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colours: tab20 first, then well-spread deterministic colours."""
    import matplotlib

    base = (np.array([matplotlib.colormaps["tab20"](i)[:3] for i in range(20)]) * 255).astype(np.uint8)
    rng = np.random.default_rng(12345)
    extra = rng.integers(40, 235, size=(max(0, n - 20), 3), dtype=np.int64).astype(np.uint8)
    return np.concatenate([base, extra])[:n]


_PALETTE = palette(512)


def colourise(labels: np.ndarray, ignore: int | None = IGNORE) -> np.ndarray:
    """Label map -> RGB, ignored pixels black."""
    lab = np.asarray(labels).astype(np.int64)
    rgb = _PALETTE[np.mod(lab, len(_PALETTE))]
    if ignore is not None:
        rgb[lab == ignore] = 0
    return rgb


def recolour_prediction(pred: np.ndarray, segment_to_class: dict[int, int], offset: int = 300) -> np.ndarray:
    """Predicted segment ids -> the class (or GT region) id they were matched to.

    Unmatched segments get ids from `offset` up, i.e. colours no class uses.
    """
    pred = np.asarray(pred).astype(np.int64)
    out = np.empty_like(pred)
    for i, seg in enumerate(np.unique(pred)):
        out[pred == seg] = segment_to_class.get(int(seg), offset + i)
    return out


def k_histogram(ks: list[int], n_gt: list[float], *, gt_name: str = "ground-truth classes",
                title: str = "") -> Figure:
    """The chosen K against the number of ground-truth classes (or regions) per image."""
    ks_a = np.asarray(ks, dtype=float)
    gt_a = np.asarray(n_gt, dtype=float)
    fig = _figure((10, 4), 110)
    ax1, ax2 = fig.subplots(1, 2)
    hi = int(np.nanmax(np.concatenate([ks_a, gt_a, [1.0]]))) + 1
    bins = np.arange(0.5, hi + 1.5, 1.0)
    ax1.hist(gt_a, bins=bins, alpha=0.55, label=f"{gt_name} per image", color="tab:gray")
    ax1.hist(ks_a, bins=bins, alpha=0.65, label="chosen K", color="tab:blue")
    ax1.set_xlabel("count per image")
    ax1.set_ylabel("images")
    ax1.legend(loc="best", fontsize=8)
    ax1.set_title("distribution")
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=ks_a.shape)
    ax2.scatter(gt_a, ks_a + jitter, s=18, alpha=0.7, color="tab:blue")
    ax2.plot([0, hi], [0, hi], color="tab:red", lw=1, ls="--", label="K = ground truth")
    ax2.set_xlim(0, hi)
    ax2.set_ylim(0, hi)
    ax2.set_xlabel(gt_name)
    ax2.set_ylabel("chosen K")
    ax2.legend(loc="upper left", fontsize=8)
    if len(ks_a) > 1 and np.nanstd(ks_a) > 0 and np.nanstd(gt_a) > 0:
        r = np.corrcoef(ks_a, gt_a)[0, 1]
        ax2.set_title(f"per image (Pearson r = {r:.2f})")
    else:
        ax2.set_title("per image")
    if title:
        fig.suptitle(title)
    return fig


def sorted_scores(scores: list[float], *, metric: str = "mIoU", aggregate: float | None = None,
                  title: str = "") -> Figure:
    """Per-image scores, sorted, with the mean of images and the dataset figure."""
    vals = np.sort(np.asarray([s for s in scores if s is not None and np.isfinite(s)], dtype=float))
    fig = _figure((8, 4), 110)
    ax = fig.subplots()
    x = np.arange(1, len(vals) + 1)
    ax.bar(x, vals * 100, color="tab:blue", width=0.85)
    if len(vals):
        ax.axhline(vals.mean() * 100, color="tab:orange", lw=1.2, label=f"mean of images {vals.mean() * 100:.1f}")
    if aggregate is not None and np.isfinite(aggregate):
        ax.axhline(aggregate * 100, color="tab:red", lw=1.2, ls="--", label=f"dataset {aggregate * 100:.1f}")
    ax.set_xlabel("images, sorted")
    ax.set_ylabel(f"per-image {metric} (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left")
    ax.set_title(title or f"per-image {metric}, sorted")
    return fig


@dataclass
class GridRow:
    image_id: str
    score: float
    k: int
    image: np.ndarray  # (H, W, 3) uint8, at the scored size
    gt: np.ndarray  # (H, W) class / region ids, 255 ignored
    pred: np.ndarray  # (H, W) recoloured prediction (matched class ids)


def best_worst_grid(best: list[GridRow], worst: list[GridRow], *, metric: str = "mIoU",
                    title: str = "") -> Figure:
    """Image, ground truth and prediction side by side for the best and the worst images."""
    rows = [("best", r) for r in best] + [("worst", r) for r in worst]
    n = max(1, len(rows))
    fig = _figure((9, 2.9 * n), 90)
    axes = fig.subplots(n, 3, squeeze=False)
    for i, (which, r) in enumerate(rows):
        panels = (r.image, colourise(r.gt), colourise(r.pred, ignore=None))
        names = ("image", "ground truth", f"prediction (K={r.k})")
        for j, (panel, name) in enumerate(zip(panels, names)):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{which}: {r.image_id}\n{metric} {r.score * 100:.1f}", fontsize=9)
            ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[len(rows) * 3:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig
