"""Per-stage speed and peak memory of the CLASP engine.

    python benchmarks/bench_engine.py                     # everything, 3 images each
    python benchmarks/bench_engine.py --configs peer      # the 481x321 BSDS500 comparison only
    python benchmarks/bench_engine.py --configs vits16-448 classic-448 --images 2

Each configuration runs in its own subprocess so that its peak RSS
(resource.ru_maxrss) is its own; one warm-up image (not counted) absorbs lazy
imports and first-call costs, then the median of every stage over --images
images is reported. ViTs use random weights (speed only; "random weights"
warnings are expected). "post" = everything after the backbone (affinity,
eigensolver, K search, clustering, CRF, upsampling), the part this engine owns.

    python benchmarks/bench_engine.py --crf-sweep         # CRF quality vs settings on ../shared/data

Targets (issue "CLASP engine", 481x321, CPU): ViT-S/16 pixel total <= 0.5 s and
post <= 0.22 s; ViT-S/8 pixel total <= 3.2 s and post <= 0.55 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from a checkout without installing
DATA = REPO.parent / "shared" / "data"
STAGES = ("load", "resize", "backbone", "affinity", "eigensolver", "k_search", "clustering", "crf")
POST = ("affinity", "eigensolver", "k_search", "clustering", "crf", "upsample")

# name -> (backbone, weights, max_side, variant, image set)
CONFIGS: dict[str, tuple[str, str | None, int, str, str]] = {}
for _side in (224, 448, 640):
    CONFIGS[f"vits16-{_side}"] = ("dino_vits16", "random", _side, "pixel", "mixed")
    CONFIGS[f"vits8-{_side}"] = ("dino_vits8", "random", _side, "pixel", "mixed")
CONFIGS["classic-448"] = ("classic", None, 448, "pixel", "mixed")
for _variant in ("patch", "pixel"):
    CONFIGS[f"bsds-vits16-{_variant}"] = ("dino_vits16", "random", 480, _variant, "bsds500")
    CONFIGS[f"bsds-vits8-{_variant}"] = ("dino_vits8", "random", 480, _variant, "bsds500")
    CONFIGS[f"bsds-classic-{_variant}"] = ("classic", None, 480, _variant, "bsds500")
GROUPS = {
    "peer": [c for c in CONFIGS if c.startswith("bsds-")],
    "sizes": [c for c in CONFIGS if not c.startswith("bsds-")],
    "quick": ["vits16-224", "classic-448", "bsds-vits16-pixel"],
}


def image_set(kind: str, n: int) -> list[Path]:
    if kind == "bsds500":
        paths = sorted((DATA / "bsds500" / "images").glob("*.jpg"))
    else:
        paths = []
        for ds in ("cocostuff", "ade20k", "camvid", "bsds500"):
            paths.extend(sorted((DATA / ds / "images").glob("*"))[:2])
    if not paths:  # no shared data: the photos bundled with dependencies
        from integrations.samples import sample_image_paths

        paths = sample_image_paths()
    # +1: the first is the warm-up
    return [paths[i % len(paths)] for i in range(n + 1)]


def worker(name: str, n_images: int, device: str, threads: int | None = None) -> dict:
    import resource

    import torch

    if threads:
        torch.set_num_threads(threads)

    from clasp_engine import SegmenterConfig
    from clasp_engine.segmenter import Segmenter

    backbone, weights, max_side, variant, kind = CONFIGS[name]
    config = SegmenterConfig(backbone=backbone, weights=weights, max_side=max_side, variant=variant, device=device)
    seg = Segmenter(config)
    paths = image_set(kind, n_images)
    seg(paths[0])
    if seg.backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for p in paths[1:]:
        r = seg(p)
        rows.append((r.diagnostics.timings, r.k, r.diagnostics.grid, r.diagnostics.solver))
    med = {s: statistics.median(t[s] for t, *_ in rows) for s in (*STAGES, "upsample", "total")}
    med["post"] = statistics.median(sum(t[s] for s in POST) for t, *_ in rows)
    out = {
        "config": name,
        "backbone": seg.backbone.name,
        "variant": variant,
        "n": len(rows),
        "grid": "x".join(map(str, rows[-1][2])),
        "solver": rows[-1][3],
        "k": statistics.median(k for _, k, *_ in rows),
        "median_s": med,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(seg.backbone.device),
        "torch_threads": torch.get_num_threads(),
    }
    if seg.backbone.device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def boundary_f(pred, gt, tol: int = 2, ignore: int = 255) -> float:
    """Boundary F-measure: predicted / true boundary pixels within ``tol`` px of the other's."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    from clasp_engine.render import boundaries

    valid = gt != ignore
    pb = boundaries(pred) & valid
    gb = boundaries(np.where(valid, gt, 0)) & valid
    if not pb.any() or not gb.any():
        return 0.0
    precision = (distance_transform_edt(~gb)[pb] <= tol).mean()
    recall = (distance_transform_edt(~pb)[gb] <= tol).mean()
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def crf_sweep(max_side: int = 448) -> None:
    """Quality of the pixel variant for a few CRF settings (how config.CRFConfig's defaults were chosen).

    Patch results come once per image from the weight-free classic backbone;
    each setting then only reruns the CRF. Prints boundary F at 2 px per
    dataset, Hungarian mIoU (covering on BSDS500) and CRF time per image.
    """
    import dataclasses
    import time

    import numpy as np
    import torch
    from PIL import Image

    from clasp_engine.backbones import create_backbone
    from clasp_engine.config import CRFConfig, SegmenterConfig
    from clasp_engine.graph import affinity, leading_eigenpairs
    from clasp_engine.images import load_image, resize_to_grid
    from clasp_engine.evaluation.metrics import aggregate_class, aggregate_region, class_scores, region_scores
    from clasp_engine.refine import crf_labels, upsample_labels
    from clasp_engine.select_k import select_k

    config = SegmenterConfig(backbone="classic", max_side=max_side, device="cpu")
    backbone = create_backbone(config, torch.device("cpu"))
    items = []
    for ds in ("cocostuff", "ade20k", "camvid", "bsds500"):
        classes = DATA / ds / "classes.txt"
        n_classes = len(classes.read_text().strip().splitlines()) if classes.exists() else None
        for path in sorted((DATA / ds / "images").iterdir()):
            gt = np.asarray(Image.open(DATA / ds / "labels" / f"{path.stem}.png"))
            image = load_image(path)
            feats = backbone.patch_features([resize_to_grid(image, max_side, backbone.patch_size)])[0]
            spectrum = leading_eigenpairs(affinity(feats), config.n_eigen)
            c = select_k(spectrum.eigenvalues, spectrum.eigenvectors).clustering
            rows, cols = feats.shape[:2]
            items.append((ds, n_classes, image, gt, c.labels.reshape(rows, cols),
                          c.probabilities.reshape(rows, cols, c.k)))
    base = CRFConfig()
    settings = {"patch (no CRF)": None, "defaults": base}
    for field, values in (("bilateral_compat", (5, 15)), ("unary_confidence", (0.3, 0.7)), ("iterations", (3, 10)),
                          ("bilateral_srgb", (8, 20)), ("bilateral_sxy", (30, 80)), ("max_side", (0, 480))):
        for v in values:
            settings[f"{field}={v}"] = dataclasses.replace(base, **{field: v})
    print(f"{len(items)} images; classic backbone, max_side {max_side}; defaults {base}")
    for name, crf in settings.items():
        t0 = time.perf_counter()
        scores: dict[str, list] = {}
        bf: dict[str, list] = {}
        for ds, n_classes, image, gt, patch_labels, probs in items:
            pred = upsample_labels(patch_labels, *image.shape[:2]) if crf is None else crf_labels(image, probs, crf)
            scores.setdefault(ds, []).append(region_scores(pred, [gt], ignore=None) if n_classes is None
                                             else class_scores(gt, pred, n_classes))
            bf.setdefault(ds, []).append(boundary_f(pred, gt))
        per_image = (time.perf_counter() - t0) / len(items)
        quality = {ds: (aggregate_region(sc).covering if ds == "bsds500"
                        else aggregate_class(sc, next(i[1] for i in items if i[0] == ds)).miou)
                   for ds, sc in scores.items()}
        mean_bf = float(np.mean([np.mean(v) for v in bf.values()]))
        print(f"{name:24s} {per_image * 1000:6.0f} ms/img  BF@2 {mean_bf:.4f} "
              + " ".join(f"{ds} {np.mean(bf[ds]):.3f}/{quality[ds]:.3f}" for ds in bf))


def table(results: list[dict]) -> str:
    cols = ["config", "grid", "solver", "K", *STAGES, "post", "total", "RSS MB"]
    has_cuda = any("cuda_peak_mb" in r for r in results)
    if has_cuda:
        cols.append("CUDA MB")
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in results:
        m = r["median_s"]
        cells = [r["config"], r["grid"], r["solver"], f"{r['k']:g}"]
        cells += [f"{m[s]:.3f}" for s in STAGES] + [f"{m['post']:.3f}", f"{m['total']:.3f}", f"{r['peak_rss_mb']:.0f}"]
        if has_cuda:
            cells.append(f"{r.get('cuda_peak_mb', 0):.0f}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", default=["all"],
                    help=f"names or groups ({', '.join(GROUPS)}, all); names: {', '.join(CONFIGS)}")
    ap.add_argument("--images", type=int, default=3, help="images per configuration (after one warm-up)")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice). On a shared, "
                    "loaded machine 1 thread can be faster: a descheduled second thread stalls every op")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--crf-sweep", action="store_true", help="CRF quality vs settings on ../shared/data, then exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.crf_sweep:
        crf_sweep()
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.images, args.device, args.threads)))
        return 0
    names: list[str] = []
    for c in args.configs:
        if c == "all":
            names.extend(CONFIGS)
        elif c in GROUPS:
            names.extend(GROUPS[c])
        elif c in CONFIGS:
            names.append(c)
        else:
            ap.error(f"unknown config {c!r}")
    names = list(dict.fromkeys(names))
    results = []
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--images", str(args.images),
                               "--device", args.device, *(["--threads", str(args.threads)] if args.threads else [])],
                              capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"done {name}: total {results[-1]['median_s']['total']:.3f} s", file=sys.stderr, flush=True)
    if results:
        r0 = results[0]
        print(f"device {r0['device']}, torch threads {r0['torch_threads']}, median seconds per image "
              f"over {args.images} image(s) after 1 warm-up; ViTs with random weights")
        print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if len(results) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
