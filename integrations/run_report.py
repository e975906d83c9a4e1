"""Small PNG pictures of one segmentation run, for the Prefect dashboard.

Each function takes plain numbers (diagnostics as the engine reports them, the
run's stage seconds) or small arrays and returns PNG bytes, kept under
`MAX_PNG_BYTES` so that a markdown artifact embedding it as a data: URL stays
light for the API and the browser:

- `k_distribution_png`: how often each K was chosen, against how often the
  eigengap elbow pointed at it;
- `spectrum_png`: the paper's Figure 3 for one image (eigengaps with the chord
  and the elbow; mean silhouette per candidate K, the chosen one marked);
- `overlay_grid_png`: a grid of small overlays with captions;
- `throughput_png`: images per second each stage of the run would sustain alone.

Figures use matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas),
not pyplot, so that they can be built from any thread without pyplot's global
state. `clasp_engine.render.spectrum_figure` draws the full-size Figure 3 to a
file for reports; the dashboard needs a compact one as bytes (about a third of
the pixels), so it is drawn here with the same conventions.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAX_PNG_BYTES = 100_000
_DPI = (80, 64, 50, 40)  # tried in this order until the PNG fits MAX_PNG_BYTES


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes, at the highest of `_DPI` that fits `MAX_PNG_BYTES`."""
    data = b""
    for dpi in _DPI:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        data = buf.getvalue()
        if len(data) <= MAX_PNG_BYTES:
            break
    return data


def k_distribution_png(chosen_k: Sequence[int], elbow_k: Sequence[int | None]) -> bytes:
    """Bars: number of images per chosen K, next to the number per elbow K.

    Parameters
    ----------
    chosen_k : sequence of int
        The K each image was segmented with.
    elbow_k : sequence of int or None
        The K the eigengap elbow pointed at, per image (None where there was no elbow).

    Returns
    -------
    bytes
        A PNG image.
    """
    chosen = [int(k) for k in chosen_k]
    elbows = [int(k) for k in elbow_k if k is not None]
    fig = _figure(5.0, 2.8)
    ax = fig.add_subplot(1, 1, 1)
    ks = sorted(set(chosen) | set(elbows)) or [1]
    x = np.arange(len(ks))
    ax.bar(x - 0.2, [chosen.count(k) for k in ks], width=0.4, color="tab:green", label="chosen K")
    ax.bar(x + 0.2, [elbows.count(k) for k in ks], width=0.4, color="tab:blue", label="elbow K")
    ax.set_xticks(x, [str(k) for k in ks])
    ax.set_xlabel("K (segments per image)")
    ax.set_ylabel("images")
    agree = sum(1 for c, e in zip(chosen_k, elbow_k) if e is not None and int(c) == int(e))
    ax.set_title(f"K chosen vs elbow K ({len(chosen)} images, {agree} agree)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def spectrum_png(diagnostics: Mapping[str, Any], title: str) -> bytes:
    """The paper's Figure 3 for one image, compact.

    Parameters
    ----------
    diagnostics : mapping
        The engine's diagnostics of one image (`Diagnostics.to_dict()`): `eigengaps`,
        `elbow_distances`, `elbow_k`, `silhouette` (candidate K -> mean silhouette), `k`, `k_rule`.
    title : str
        Names the image and why it was picked.

    Returns
    -------
    bytes
        A PNG image.
    """
    gaps = np.asarray(diagnostics.get("eigengaps") or [], dtype=np.float64)
    dist = np.asarray(diagnostics.get("elbow_distances") or np.zeros_like(gaps), dtype=np.float64)
    sil = {int(k): float(v) for k, v in (diagnostics.get("silhouette") or {}).items()}
    k, elbow, rule = int(diagnostics["k"]), diagnostics.get("elbow_k"), diagnostics.get("k_rule", "")
    ks = np.arange(1, gaps.size + 1)

    fig = _figure(7.5, 2.9)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    if gaps.size:
        dax = ax.twinx()
        if dist.size == gaps.size:
            dax.bar(ks, dist, width=0.6, color="0.85", zorder=0)
            dax.set_ylim(0, max(1e-9, float(dist.max())) * 1.25)
        dax.set_yticks([])
        ax.set_zorder(dax.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(ks, gaps, "o-", ms=4, color="tab:blue", label="eigengap δi")
        ax.plot([ks[0], ks[-1]], [gaps[0], gaps[-1]], "--", color="tab:gray", label="chord")
        if elbow is not None and 1 <= int(elbow) <= gaps.size:
            ax.plot([elbow], [gaps[int(elbow) - 1]], "o", ms=11, mfc="none", mec="tab:red", mew=2,
                    label=f"elbow K={elbow}")
        ax.set_xticks(ks if ks.size <= 20 else ks[::2])
        ax.legend(fontsize=7, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no spectrum", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("i (gap votes for K = i)", fontsize=8)
    ax.set_ylabel("eigengap", fontsize=8)
    ax.set_title("eigengaps and elbow", fontsize=9)
    if sil:
        cand = sorted(sil)
        vals = [sil[c] for c in cand]
        ax2.bar(cand, vals, color=["tab:green" if c == k else "tab:orange" for c in cand])
        ax2.set_xticks(cand)
        lo, hi = min(vals), max(vals)
        ax2.set_ylim(min(0.0, lo) * 1.1, hi * 1.15 if hi > 0 else 1.0)
    else:
        ax2.text(0.5, 0.5, "no silhouette search", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("candidate K", fontsize=8)
    ax2.set_ylabel("mean silhouette", fontsize=8)
    ax2.set_title(f"chosen K = {k} ({rule})", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def overlay_grid_png(tiles: Sequence[tuple[np.ndarray, str]], columns: int = 3) -> bytes:
    """A grid of small RGB tiles, each with its caption, as a palette PNG.

    Parameters
    ----------
    tiles : sequence of (array, str)
        (H, W, 3) uint8 images (overlays, already small) and their captions.
    columns : int
        Tiles per row.

    Returns
    -------
    bytes
        A PNG image (256-colour palette: overlays compress poorly as true colour).
    """
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("overlay_grid_png: no tiles given; pass at least one (image, caption) pair")
    cell = max(max(t.shape[0], t.shape[1]) for t, _ in tiles)
    caption_h = 14
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * (cell + 4), rows * (cell + caption_h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = c * (cell + 4) + 2, r * (cell + caption_h + 4) + 2
        sheet.paste(Image.fromarray(np.ascontiguousarray(tile, dtype=np.uint8)), (x, y))
        draw.text((x, y + cell + 1), caption[: cell // 6], fill=(0, 0, 0))
    data = b""
    for colours in (256, 128, 64, 32):
        buf = io.BytesIO()
        sheet.quantize(colours).save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
        if len(data) <= MAX_PNG_BYTES:
            break
    return data


def throughput_png(stage_seconds: Mapping[str, float], images: int, title: str = "") -> bytes:
    """Horizontal bars: images per second each stage sustains (images / seconds spent in it).

    Parameters
    ----------
    stage_seconds : mapping of str to float
        Seconds spent in each stage over the run (summed over images or batches).
    images : int
        Images the run segmented.
    title : str
        Shown above the bars (e.g. end-to-end images per second).

    Returns
    -------
    bytes
        A PNG image.
    """
    stages = [(name, float(s)) for name, s in stage_seconds.items() if s and s > 0]
    stages.sort(key=lambda kv: kv[1])  # slowest stage (most seconds) at the top of the chart
    fig = _figure(5.5, 0.6 + 0.28 * max(1, len(stages)))
    ax = fig.add_subplot(1, 1, 1)
    if stages and images > 0:
        rates = [images / s for _, s in stages]
        ax.barh([n for n, _ in stages], rates, color="tab:purple")
        ax.set_xscale("log")
        for y, rate in enumerate(rates):
            ax.text(rate, y, f" {rate:.3g}/s", va="center", fontsize=7)
        ax.set_xlim(min(rates) / 2, max(rates) * 6)
    else:
        ax.text(0.5, 0.5, "no image segmented", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("images per second the stage sustains (log)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title or "throughput per stage", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def silhouette_at_k(diagnostics: Mapping[str, Any]) -> float | None:
    """Mean silhouette of the chosen K, or None where no silhouette search ran (or it gave NaN)."""
    sil = diagnostics.get("silhouette") or {}
    value = sil.get(diagnostics.get("k"), sil.get(str(diagnostics.get("k"))))
    if value is None or not np.isfinite(float(value)):  # NaN: a candidate the search could not score
        return None
    return float(value)


def median_and_weakest(records: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """The record with the median silhouette at its chosen K, and the one with the lowest.

    Records without a silhouette (K fixed, or one segment) are left out; if none
    has one, the median is taken by K and there is no weakest.
    """
    scored = [(s, r) for r in records if (s := silhouette_at_k(r)) is not None]
    if scored:
        scored.sort(key=lambda sr: sr[0])
        return scored[(len(scored) - 1) // 2][1], scored[0][1]
    if not records:
        return None, None
    by_k = sorted(records, key=lambda r: int(r["k"]))
    return by_k[(len(by_k) - 1) // 2], None
