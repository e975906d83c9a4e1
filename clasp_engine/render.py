"""Pictures of a result: a colour overlay of the segments, and the spectrum figure
(eigengap elbow + silhouette search, the paper's Figure 3) for one image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from clasp_engine.result import Diagnostics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 distinct colours: tab20 first, then evenly spaced hues."""
    import matplotlib

    base = (np.asarray(matplotlib.colormaps["tab20"].colors)[::2].tolist()
            + np.asarray(matplotlib.colormaps["tab20"].colors)[1::2].tolist())
    colours = np.asarray(base[:k], dtype=np.float64)
    if k > len(base):
        import colorsys

        extra = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95) for i in range(k - len(base))]
        colours = np.vstack([colours, np.asarray(extra)])
    return (colours * 255).round().astype(np.uint8)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.45,
            boundary_colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The image with each segment tinted in its own colour and segment boundaries drawn.

    image: (H, W, 3) uint8; labels: (H, W) integers (resized nearest if the shapes differ).
    Returns (H, W, 3) uint8.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3); got shape {image.shape}")
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != image.shape[:2]:
        from clasp_engine.refine import upsample_labels

        labels = upsample_labels(labels, *image.shape[:2])
    colours = palette(int(labels.max()) + 1).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours[labels]
    out = blended.round().clip(0, 255).astype(np.uint8)
    out[boundaries(labels)] = boundary_colour
    return out


def spectrum_figure(diagnostics: Diagnostics | dict[str, Any], *, title: str | None = None) -> Figure:
    """The two-panel spectrum figure of one image, as a matplotlib ``Figure`` (the caller writes it).

    Left: eigengaps δi against i (= the K each gap votes for), the chord joining
    the first and last gap points, each point's perpendicular distance to it
    (grey bars, right axis), the elbow marked. Right: mean silhouette of every
    candidate K, the chosen K marked, and the rule that chose it.
    """
    from matplotlib.figure import Figure

    d = diagnostics if isinstance(diagnostics, dict) else diagnostics.to_dict()
    gaps = np.asarray(d["eigengaps"], dtype=np.float64)
    dist = np.asarray(d.get("elbow_distances") or np.zeros_like(gaps), dtype=np.float64)
    ks = np.arange(1, gaps.size + 1)
    sil = {int(k): float(v) for k, v in (d.get("silhouette") or {}).items()}
    k, elbow, rule = d["k"], d.get("elbow_k"), d.get("k_rule", "")

    fig = Figure(figsize=(11, 4.2), dpi=110)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    dax = ax.twinx()
    if gaps.size:
        dax.bar(ks, dist, width=0.6, color="0.85", zorder=0, label="distance to chord")
        dax.set_ylabel("perpendicular distance (scaled plot)", color="0.4")
        dax.tick_params(axis="y", colors="0.4")
        dax.set_ylim(0, max(1e-9, dist.max()) * 1.25)
        ax.set_zorder(dax.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(ks, gaps, "o-", color="tab:blue", label="eigengap δi = λi − λi+1")
        ax.plot([ks[0], ks[-1]], [gaps[0], gaps[-1]], "--", color="tab:gray", label="chord (first to last)")
        if elbow is not None and 1 <= elbow <= gaps.size:
            ax.plot([elbow], [gaps[elbow - 1]], "o", ms=14, mfc="none", mec="tab:red", mew=2,
                    label=f"elbow: K = {elbow}")
        lo, hi = (min(sil), max(sil)) if sil else (None, None)
        if lo is not None:
            ax.axvspan(lo - 0.5, hi + 0.5, color="tab:orange", alpha=0.12, label="silhouette window")
    ax.set_xlabel("i  (gap δi votes for K = i clusters)")
    ax.set_ylabel("eigengap")
    ax.set_xticks(ks if ks.size <= 25 else ks[::2])
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Eigengaps of D^-1/2 W D^-1/2 and the elbow")

    if sil:
        cand = sorted(sil)
        vals = [sil[c] for c in cand]
        colours = ["tab:green" if c == k else "tab:orange" for c in cand]
        ax2.bar(cand, vals, color=colours)
        for c, v in zip(cand, vals):
            ax2.text(c, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax2.set_xticks(cand)
        top = max(vals)
        ax2.set_ylim(min(0.0, min(vals)) * 1.1, top * 1.15 if top > 0 else 1.0)
    else:
        ax2.text(0.5, 0.5, "no silhouette search", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("candidate K")
    ax2.set_ylabel("mean silhouette")
    ax2.set_title(f"Chosen K = {k}  (rule: {rule})")
    size = f"{d.get('width', '')}×{d.get('height', '')}"
    head = title or f"{d.get('backbone', '')}  {size}  variant={d.get('variant', '')}"
    fig.suptitle(head, fontsize=10)
    fig.tight_layout()
    return fig
