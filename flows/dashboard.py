"""Pictures of a `segment` run on its Prefect dashboard page (Artifacts tab).

The flow hands each segmented batch to a `RunDashboard` (`observe`) and, at the
end, publishes (`publish`) four kinds of markdown artifacts, each embedding one
PNG (under 100 KB) as a data: URL, which the Prefect UI draws inline:

- ``segment-k-distribution``: chosen K against the eigengap elbow's K;
- ``segment-spectrum-median`` / ``segment-spectrum-weakest``: the eigengap and
  silhouette figure (the paper's Figure 3) of the image with the median, and the
  lowest, silhouette at its chosen K;
- ``segment-overlays``: the first images' overlays, small;
- ``segment-throughput``: images per second each stage sustains.

Memory stays bounded on long runs: every image adds two small integers (its K
and elbow K); full diagnostics are kept for a reservoir sample of
`SAMPLE_SIZE` images (the median is taken over it) and for the weakest image.
Pictures are best effort: a failure to draw or publish one is logged and never
fails the run.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Mapping
from typing import Any

import numpy as np

SAMPLE_SIZE = 1000
OVERLAY_TILES = 6
TILE_SIDE = 160


def png_markdown(png: bytes, alt: str, text: str = "") -> str:
    """Markdown embedding a PNG as a data: URL (drawn inline by the Prefect UI), then `text`."""
    b64 = base64.b64encode(png).decode("ascii")
    return f"![{alt}](data:image/png;base64,{b64})\n\n{text}".rstrip() + "\n"


class RunDashboard:
    """Collects what a segment run's pictures need, batch by batch, and publishes them."""

    def __init__(self, seed: int = 0) -> None:
        self.chosen_k: list[int] = []
        self.elbow_k: list[int | None] = []
        self.sample: list[dict[str, Any]] = []  # diagnostics records, reservoir sample
        self.weakest: dict[str, Any] | None = None
        self.tiles: list[tuple[np.ndarray, str]] = []
        self._seen = 0
        self._rng = random.Random(seed)

    # ------------------------------------------------------------ collecting
    def observe(self, done: list[tuple[Any, Any]]) -> None:
        """Record a batch's (item, Segmentation) pairs: K, elbow K, diagnostics, first overlays."""
        from integrations.run_report import silhouette_at_k

        for item, segmentation in done:
            d = segmentation.diagnostics
            record = {
                "image_id": item.image_id, "uri": item.uri, "k": int(segmentation.k), "elbow_k": d.elbow_k,
                "k_rule": d.k_rule, "eigengaps": list(d.eigengaps), "elbow_distances": list(d.elbow_distances),
                "silhouette": {int(k): float(v) for k, v in d.silhouette.items()},
            }
            self.chosen_k.append(record["k"])
            self.elbow_k.append(None if d.elbow_k is None else int(d.elbow_k))
            self._seen += 1
            if len(self.sample) < SAMPLE_SIZE:
                self.sample.append(record)
            else:  # reservoir sampling (Algorithm R): each image kept with probability SAMPLE_SIZE / seen
                j = self._rng.randrange(self._seen)
                if j < SAMPLE_SIZE:
                    self.sample[j] = record
            s = silhouette_at_k(record)
            if s is not None and (self.weakest is None or s < silhouette_at_k(self.weakest)):
                self.weakest = record
            if len(self.tiles) < OVERLAY_TILES and getattr(item, "image", None) is not None:
                tile = overlay_tile(item.image, segmentation.labels)
                if tile is not None:
                    self.tiles.append((tile, f"#{item.image_id} K={record['k']}"))

    # ------------------------------------------------------------ publishing
    def pictures(self, summary: Mapping[str, Any]) -> dict[str, tuple[bytes, str]]:
        """Artifact key -> (PNG bytes, description) for this run (only those with data)."""
        from integrations import run_report as rr

        run = summary.get("run_id")
        out: dict[str, tuple[bytes, str]] = {}
        if self.chosen_k:
            out["segment-k-distribution"] = (
                rr.k_distribution_png(self.chosen_k, self.elbow_k), f"Run {run}: chosen K vs the eigengap elbow's K"
            )
            median, _ = rr.median_and_weakest(self.sample)
            for key, record, why in (("segment-spectrum-median", median, "median silhouette"),
                                     ("segment-spectrum-weakest", self.weakest, "weakest silhouette")):
                if record is None:
                    continue
                s = rr.silhouette_at_k(record)
                title = f"image #{record['image_id']} ({why}{'' if s is None else f' {s:.3f}'}): {_short(record['uri'])}"
                out[key] = (rr.spectrum_png(record, title), f"Run {run}: eigengaps and silhouette, {why} image")
        if self.tiles:
            out["segment-overlays"] = (rr.overlay_grid_png(self.tiles), f"Run {run}: first {len(self.tiles)} overlays")
        stages = stage_seconds(summary)
        if stages:
            ips = summary.get("images_per_second", 0.0)
            out["segment-throughput"] = (
                rr.throughput_png(stages, int(summary.get("done", 0)), f"throughput per stage (end to end {ips:.2f} images/s)"),
                f"Run {run}: images per second each stage sustains",
            )
        return out

    def publish(self, summary: Mapping[str, Any], logger: Any = None) -> list[str]:
        """Create one markdown artifact per picture; returns the keys published. Never raises."""
        from prefect.artifacts import create_markdown_artifact

        try:
            pictures = self.pictures(summary)
        except Exception as exc:  # noqa: BLE001 - a drawing bug must not fail a finished run
            if logger is not None:
                logger.warning("dashboard pictures not drawn: %s: %s", type(exc).__name__, exc)
            return []
        published = []
        for key, (png, description) in pictures.items():
            try:
                create_markdown_artifact(markdown=png_markdown(png, key), key=key, description=description)
                published.append(key)
            except Exception as exc:  # noqa: BLE001 - the API refused one artifact; the others still go
                if logger is not None:
                    logger.warning("dashboard picture %s not published: %s: %s", key, type(exc).__name__, exc)
        return published


def stage_seconds(summary: Mapping[str, Any]) -> dict[str, float]:
    """Seconds per stage over the run: I/O and storage stages, then the engine's own stages."""
    done = int(summary.get("done", 0))
    out: dict[str, float] = {}
    for key in ("claim", "read", "decode", "store", "overlay"):
        value = (summary.get("io_seconds") or {}).get(key)
        if value:
            out[key] = float(value)
    for stage, per_image in (summary.get("seconds_per_image_per_stage") or {}).items():
        if stage != "total" and per_image:
            out[f"engine: {stage}"] = float(per_image) * done
    return out


def overlay_tile(image: np.ndarray, labels: np.ndarray, side: int = TILE_SIDE) -> np.ndarray | None:
    """A `side`-pixel (long side) overlay of labels on the image, or None if the renderer is missing."""
    from PIL import Image

    try:
        from clasp_engine.render import overlay
    except ImportError:
        return None
    h, w = labels.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BILINEAR))
    small_labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.NEAREST)).astype(labels.dtype)
    return overlay(small, small_labels)


def _short(uri: str, n: int = 40) -> str:
    name = uri.rstrip("/").split("/")[-1].split("?")[0]
    return name if len(name) <= n else name[: n - 1] + "…"
