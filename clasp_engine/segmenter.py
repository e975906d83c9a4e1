"""The CLASP pipeline: image -> patch features -> spectrum -> K -> clusters -> labels.

``Segmenter`` loads the backbone once; each call runs the stages, times them
and returns a :class:`~clasp_engine.result.Segmentation` whose diagnostics say
how K was chosen and how long every stage took.
"""

from __future__ import annotations

import functools
import os
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from clasp_engine import __version__
from clasp_engine.cluster import Clustering
from clasp_engine.config import SegmenterConfig
from clasp_engine.embed import region_embeddings
from clasp_engine.graph import Spectrum, affinity_batch, leading_eigenpairs_batch
from clasp_engine.refine import crf_labels, upsample_labels
from clasp_engine.result import Diagnostics, Segment, Segmentation
from clasp_engine.select_k import KSelection, select_k_batch

STAGES = ("load", "resize", "backbone", "affinity", "eigensolver", "k_search", "clustering", "crf", "upsample",
          "total")
RANDOM_WEIGHTS_WARNING = "random weights: speed measurement only"
CLASSIC_FALLBACK_WARNING = "classic fallback: no ViT weights found, using the weight-free classic features"
# Images of one size go through the engine together, at most this many at once
# (bounds activation memory for ViT-S/8 at large sizes; a chunk that still runs
# out of device memory is split in halves and retried).
MAX_BATCH = 8


def crf_workers_for_machine(device: str | torch.device) -> int:
    """CRF pool size for this machine: one process per core beside the engine's, on CUDA only.

    On CPU the CRF competes with the engine's own stages for the same cores.
    Measured on this project's 2-core machine (classic, pixel, 8 images at
    448x448, chunks of 4, identical labels both ways) while ~7 other jobs kept
    the load at 15-20: in-process 110.2 s, a pool of 2 spawned workers 69.9 s.
    Under that load extra processes mostly win a larger share of the contended
    cores, and on a quiet machine a pool task costs ~0.3 s (STACK-NOTES) against
    ~0.1 s for a 320-px CRF, so CPU stays in-process (0) until a quiet
    measurement says otherwise.
    """
    if torch.device(device).type != "cuda":
        return 0
    return max(1, (os.cpu_count() or 2) - 1)


class Segmenter:
    """Training-free region proposals for one configuration.

    Parameters
    ----------
    config : SegmenterConfig, optional
        Defaults to ``SegmenterConfig()``.
    backbone : Backbone, optional
        A ready feature extractor (see ``clasp_engine.backbones.base.Backbone``);
        by default one is created from the config, once, here.
    max_batch : int, optional
        Most images of one size that go through the stages together (default
        ``MAX_BATCH``); a chunk that runs out of device memory is split anyway.
    crf_workers : int, optional
        Pixel variant: run the DenseCRFs in a pool of this many processes, fed
        while the next chunk goes through the device stages (a GPU worker:
        ``crf_workers_for_machine()``). 0 (default): in this process. On this
        project's 2-core CPU machine the pool does not pay; see
        :func:`crf_workers_for_machine`.
    """

    def __init__(self, config: SegmenterConfig | None = None, backbone: Any | None = None, *,
                 max_batch: int = MAX_BATCH, crf_workers: int = 0):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: need at least 1 image per batch")
        if crf_workers < 0:
            raise ValueError(f"crf_workers={crf_workers}: 0 (in-process) or a number of processes")
        self.max_batch = max_batch
        self._crf_pool = None
        if crf_workers:
            import concurrent.futures
            import multiprocessing

            # spawn: the workers must not inherit torch's threads or a CUDA context.
            self._crf_pool = concurrent.futures.ProcessPoolExecutor(
                crf_workers, mp_context=multiprocessing.get_context("spawn"))
        self.config = config if config is not None else SegmenterConfig()
        if backbone is None:
            from clasp_engine.backbones import create_backbone, resolve_device

            backbone = create_backbone(self.config, resolve_device(self.config.device),
                                       weights_dir=self.config.weights_dir)
        self.backbone = backbone
        self.warnings = self._backbone_warnings()

    def _backbone_warnings(self) -> list[str]:
        warnings = list(getattr(self.backbone, "warnings", []) or [])
        kind = getattr(self.backbone.weights, "kind", "")
        if kind == "random" and RANDOM_WEIGHTS_WARNING not in warnings:
            warnings.append(RANDOM_WEIGHTS_WARNING)
        if (self.backbone.name.startswith("classic") and self.config.backbone != "classic"
                and not any("classic" in w for w in warnings)):
            warnings.append(CLASSIC_FALLBACK_WARNING)
        return warnings

    def __call__(self, image: Any) -> Segmentation:
        """Segment one image: a path, encoded bytes, a PIL image or an (H, W, 3) array."""
        return self.segment_batch([image])[0]

    def segment_batch(self, images: list[Any], *, errors: str = "raise") -> list[Any]:
        """Segment several images; those of one working size go through every stage together.

        Images are grouped by working size (here, and only here) and cut into
        chunks of at most ``max_batch``; each chunk runs the backbone, the
        affinity, the eigensolver and the K search as batched tensor operations
        on the configured device. Every image's result depends on that image
        and the config only, never on the batch it came in.

        Parameters
        ----------
        images : paths, encoded bytes, PIL images or (H, W, 3) arrays.
        errors : {"raise", "return"}
            An image that cannot be decoded or segmented fails alone: with
            "return" its place in the result holds the exception (a
            ``ClaspError`` for bad input); with "raise" the first such
            exception is raised after the whole batch has run.

        Returns
        -------
        list of Segmentation (or exceptions, with ``errors="return"``), in input order.
        """
        from clasp_engine.images import load_image, resize_to_grid

        if errors not in ("raise", "return"):
            raise ValueError(f"errors={errors!r}: choose 'raise' or 'return'")
        results: list[Any] = [None] * len(images)
        prepared: dict[int, tuple[np.ndarray, np.ndarray, dict[str, float]]] = {}
        for i, source in enumerate(images):
            timings = dict.fromkeys(STAGES, 0.0)
            try:
                t0 = time.perf_counter()
                original = load_image(source)
                t1 = time.perf_counter()
                work = resize_to_grid(original, self.config.max_side, self.backbone.patch_size)
                t2 = time.perf_counter()
            except Exception as exc:  # noqa: BLE001 - one bad image must not sink the batch
                results[i] = exc
                continue
            timings["load"], timings["resize"] = t1 - t0, t2 - t1
            prepared[i] = (original, work, timings)

        pending: list[tuple[list[int], list[Any]]] = []
        groups: OrderedDict[tuple[int, int], list[int]] = OrderedDict()
        for i, (_, work, _) in prepared.items():
            groups.setdefault(work.shape[:2], []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                try:
                    pending.append((chunk, self._segment_chunk([prepared[i] for i in chunk])))
                except Exception as exc:  # noqa: BLE001 - isolate the image that broke the chunk
                    if len(chunk) == 1:
                        results[chunk[0]] = exc
                    else:
                        for i in chunk:
                            results[i] = self._segment_one_isolated(prepared[i])
        # With a CRF pool, each chunk's CRFs ran in worker processes while the
        # next chunks went through the device stages; collect them now.
        for chunk, finishers in pending:
            for i, finish in zip(chunk, finishers):
                results[i] = _settle(finish)
        if errors == "raise":
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return results

    # ------------------------------------------------------------------ stages

    def _sync(self) -> None:
        # CUDA kernels run asynchronously; without a sync the time lands in a later stage.
        if self.backbone.device.type == "cuda":
            torch.cuda.synchronize(self.backbone.device)

    def _segment_one_isolated(self, item: tuple[np.ndarray, np.ndarray, dict[str, float]]) -> Any:
        try:
            return _settle(self._segment_chunk([item])[0])
        except Exception as exc:  # noqa: BLE001
            return exc

    def _features(self, works: list[np.ndarray]) -> torch.Tensor:
        """Patch features (B, rows, cols, D) for same-size images; split in halves on out-of-memory."""
        try:
            return self._backbone_batch(works)
        except torch.OutOfMemoryError:
            if len(works) == 1:
                raise
            if self.backbone.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(works) // 2
            return torch.cat([self._features(works[:half]), self._features(works[half:])])

    def _backbone_batch(self, works: list[np.ndarray]) -> torch.Tensor:
        # Assumed backbone interface (issue 9: batching by size happens here only):
        # ``batch_features(batch)`` takes one (B, H, W, 3) uint8 array of equal-size
        # images and returns (B, rows, cols, D) on the backbone's device.
        # Backbones that only have the older ``patch_features(list)`` still work.
        batch_features = getattr(self.backbone, "batch_features", None)
        if callable(batch_features):
            return batch_features(np.stack(works))
        return torch.stack(list(self.backbone.patch_features(works)))

    def _segment_chunk(self, items: list[tuple[np.ndarray, np.ndarray, dict[str, float]]]) -> list[Any]:
        """Every stage for images of one working size; returns Segmentations (or per-image exceptions)."""
        cfg = self.config
        count = len(items)

        def share(stage: str, since: float) -> None:
            self._sync()
            for _, _, timings in items:
                timings[stage] = (time.perf_counter() - since) / count

        t = time.perf_counter()
        feats = self._features([work for _, work, _ in items])
        share("backbone", t)
        rows, cols = int(feats.shape[1]), int(feats.shape[2])
        n = rows * cols

        t = time.perf_counter()
        W = affinity_batch(feats)
        share("affinity", t)

        t = time.perf_counter()
        m = min(max(cfg.n_eigen, cfg.k or 0), n)
        spectra = leading_eigenpairs_batch(W, m, seed=cfg.seed)
        del W
        share("eigensolver", t)

        t = time.perf_counter()
        # On CUDA every candidate K of every image is one batch. On CPU the same
        # function runs image by image: the ops are memory-bound there, and the
        # batch only grows the working set (classic, 8 images of 3136 patches,
        # 2-core machine under load: K search 2.8 s/image one by one, 5.1 s/image
        # as one batch; benchmarks/bench_batched.py). Results are the same either way.
        per_call = count if spectra[0].eigenvectors.device.type != "cpu" else 1
        selections = []
        for start in range(0, count, per_call):
            part = spectra[start:start + per_call]
            selections.extend(select_k_batch([s.eigenvalues for s in part], [s.eigenvectors for s in part], k=cfg.k,
                                             k_min=cfg.k_min, k_max=cfg.k_max, window=cfg.silhouette_window,
                                             seeds=[cfg.seed] * len(part)))
        share("k_search", t)

        out: list[Any] = []
        for index, ((original, work, timings), spectrum, selection) in enumerate(zip(items, spectra, selections)):
            clustering = selection.clustering
            crf_job = None
            if cfg.variant == "pixel" and clustering.k > 1 and self._crf_pool is not None:
                probabilities = clustering.probabilities.reshape(rows, cols, clustering.k)
                crf_job = self._crf_pool.submit(_timed_crf, original, probabilities, cfg.crf)
            out.append(functools.partial(self._finish, original, work, timings, rows, cols, spectrum, selection,
                                         crf_job, feats[index]))
        if self._crf_pool is None:  # in-process: finish now, nothing to overlap with
            out = [_settle(finish) for finish in out]
        return out

    def _finish(self, original: np.ndarray, work: np.ndarray, timings: dict[str, float], rows: int, cols: int,
                spectrum: Spectrum, selection: KSelection, crf_job: Any = None,
                patch_features: torch.Tensor | None = None) -> Segmentation:
        """CRF (here, or collected from the pool) or upsampling, compact numbering, segments and diagnostics."""
        cfg = self.config
        height, width = original.shape[:2]
        clustering = selection.clustering
        patch_labels = clustering.labels.reshape(rows, cols)
        probabilities = clustering.probabilities.reshape(rows, cols, clustering.k)
        if crf_job is not None:
            labels, timings["crf"] = crf_job.result()
        elif cfg.variant == "pixel" and clustering.k > 1:
            labels, timings["crf"] = _timed_crf(original, probabilities, cfg.crf)
        else:
            labels = None

        t = time.perf_counter()
        if labels is None:
            labels = upsample_labels(patch_labels, height, width)
        labels, patch_labels, k, mapping = _compact(labels, patch_labels, clustering.k)
        segments = _segments(labels, k, _pixel_confidences(labels, clustering, mapping, rows, cols))
        timings["upsample"] = time.perf_counter() - t
        timings["total"] = sum(v for key, v in timings.items() if key != "total")

        warnings = list(self.warnings)
        if selection.k != k:
            warnings.append(f"K shrank from {selection.k} to {k}: empty clusters after "
                            f"{'CRF' if cfg.variant == 'pixel' else 'clustering'} were dropped")
        weights = self.backbone.weights
        diagnostics = Diagnostics(
            k=k,
            elbow_k=selection.elbow_k,
            k_rule=selection.rule,
            eigenvalues=[float(v) for v in spectrum.eigenvalues],
            eigengaps=[float(v) for v in selection.eigengaps],
            elbow_distances=[float(v) for v in selection.elbow_distances],
            silhouette={int(c): float(s) for c, s in selection.silhouette.items()},
            backbone=self.backbone.name,
            weights=weights.describe(),
            weights_sha256=weights.sha256,
            features=cfg.features,
            variant=cfg.variant,
            width=width,
            height=height,
            work_width=int(work.shape[1]),
            work_height=int(work.shape[0]),
            grid=(rows, cols),
            patch_size=int(self.backbone.patch_size),
            device=str(self.backbone.device),
            timings={key: float(timings[key]) for key in STAGES},
            engine_version=__version__,
            config=cfg.to_dict(),
            warnings=warnings,
            solver=spectrum.solver,
        )
        embeddings = (None if patch_features is None
                      else region_embeddings(patch_features.detach().float().cpu().numpy(), patch_labels, k))
        alternatives = {int(c): alt.labels.reshape(rows, cols) for c, alt in selection.candidates.items()
                        if c != selection.k}
        return Segmentation(labels=labels, patch_labels=patch_labels, segments=segments, diagnostics=diagnostics,
                            region_embeddings=embeddings, alternatives=alternatives)


def _timed_crf(image: np.ndarray, probabilities: np.ndarray, crf: Any) -> tuple[np.ndarray, float]:
    """DenseCRF labels and the seconds they took (a top-level function: it runs in pool workers)."""
    t = time.perf_counter()
    labels = crf_labels(image, probabilities, crf)
    return labels, time.perf_counter() - t


def _settle(finish: Any) -> Any:
    """Run one image's last stages (if not run yet); an exception becomes that image's result (it fails alone)."""
    if not callable(finish):  # already a Segmentation or an exception
        return finish
    try:
        return finish()
    except Exception as exc:  # noqa: BLE001
        return exc


def _compact(labels: np.ndarray, patch_labels: np.ndarray, k_before: int
             ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Renumber labels 0..K-1 by first occurrence in raster order, dropping empty ones.

    Returns the label map (uint8 when K <= 255, else uint16), the patch grid in
    the same numbering (labels that vanished at pixel level get numbers >= K),
    K, and the old -> new mapping.
    """
    flat = labels.ravel()
    present, first = np.unique(flat, return_index=True)
    order = present[np.argsort(first, kind="stable")]
    mapping = np.full(max(k_before, int(flat.max()) + 1), -1, dtype=np.int64)
    mapping[order] = np.arange(len(order))
    missing = np.flatnonzero(mapping == -1)
    mapping[missing] = len(order) + np.arange(len(missing))
    k = len(order)
    dtype = np.uint8 if k <= 255 else np.uint16
    return mapping[labels].astype(dtype), mapping[patch_labels].astype(np.int64), k, mapping


def _pixel_confidences(labels: np.ndarray, clustering: Clustering, mapping: np.ndarray, rows: int,
                       cols: int) -> np.ndarray:
    """Mean soft probability of each final segment over its pixels.

    Each pixel reads the probability its patch (nearest) gives to the pixel's
    final label: the same as upsampling the probabilities, without the (K, H, W) array.
    """
    height, width = labels.shape
    k = int(labels.max()) + 1
    inverse = np.argsort(mapping)[:k]  # new label -> old (clustering) label
    # Flat index of the patch each pixel falls in: the same nearest mapping as the patch labels.
    patch_index = upsample_labels(np.arange(rows * cols).reshape(rows, cols), height, width)
    old = inverse[labels.astype(np.int64)]
    p = clustering.probabilities[patch_index, np.minimum(old, clustering.k - 1)]
    sums = np.bincount(labels.ravel(), weights=p.ravel(), minlength=k)
    counts = np.bincount(labels.ravel(), minlength=k)
    return sums / np.maximum(counts, 1)


def _segments(labels: np.ndarray, k: int, confidences: np.ndarray) -> list[Segment]:
    height, width = labels.shape
    lab = labels.astype(np.int64)
    areas = np.bincount(lab.ravel(), minlength=k)
    # Per-label presence by row and by column, from two bincounts (no per-label masks).
    row_hits = np.bincount((np.arange(height)[:, None] * k + lab).ravel(), minlength=height * k).reshape(height, k)
    col_hits = np.bincount((np.arange(width)[None, :] * k + lab).ravel(), minlength=width * k).reshape(width, k)
    segments = []
    for label in range(k):
        ys = np.flatnonzero(row_hits[:, label])
        xs = np.flatnonzero(col_hits[:, label])
        segments.append(Segment(label=label, area=int(areas[label]),
                                bbox=(int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1),
                                confidence=float(np.clip(confidences[label], 0.0, 1.0))))
    return segments
