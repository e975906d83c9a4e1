"""The batched engine side by side with the per-image path, per stage, on the same decoded images.

    python benchmarks/bench_batched.py                              # CPU: classic and ViT-S/16 @448
    python benchmarks/bench_batched.py --configs classic-patch --images 8 --batch 8
    python benchmarks/bench_batched.py --device cuda --gpu          # the GPU table (issue 14 item 6)
    python benchmarks/bench_batched.py --device cpu --quick         # smallest run (CI / no GPU)
    python benchmarks/bench_batched.py --solvers                    # eigensolvers on the device, batched

Per configuration it segments the same decoded images twice: one call per
image (``per-image``) and ``segment_batch`` over ``--batch`` images at a time
(``batched``; images of one working size go through every stage together). It
prints seconds per image per stage (the stage time of a batch is shared by its
images), images/s, and on CUDA the peak GPU memory and the cost line: GPU-hours
per million images = 1e6 / (images/s) / 3600. Decoding is not timed: the images
are decoded once before either run. One warm-up call (not counted) absorbs lazy
imports and first-call costs.

ViTs run with RANDOM weights: speed only (their segments mean nothing; random
weights usually give a small K, which makes the K search cheaper than with real
weights). Every line says so.

Run against another checkout (e.g. today's main, for its per-image figures) by
putting it first on PYTHONPATH; this script only appends its own repository.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # after PYTHONPATH: another checkout can be measured with this script
DATA = REPO.parent / "shared" / "data"
STAGES = ("backbone", "affinity", "eigensolver", "k_search", "clustering", "crf", "upsample")

# name -> (backbone, weights, max_side, variant)
CONFIGS = {
    "classic-patch": ("classic", None, 448, "patch"),
    "classic-pixel": ("classic", None, 448, "pixel"),
    "vits16-patch": ("dino_vits16", "random", 448, "patch"),
    "vits16-pixel": ("dino_vits16", "random", 448, "pixel"),
    "vits8-patch": ("dino_vits8", "random", 448, "patch"),
    "vits8-pixel": ("dino_vits8", "random", 448, "pixel"),
    "dinov2reg-patch": ("dinov2_vits14_reg", "random", 448, "patch"),
    "dinov2reg-pixel": ("dinov2_vits14_reg", "random", 448, "pixel"),
}
CPU_DEFAULT = ["classic-patch", "classic-pixel", "vits16-patch", "vits16-pixel"]
GPU_DEFAULT = ["vits8-patch", "vits8-pixel", "dinov2reg-patch", "dinov2reg-pixel", "vits16-patch", "vits16-pixel"]
QUICK = ["classic-patch"]


def decoded_images(n: int, side: int) -> list:
    """``n`` decoded RGB images, side x side (centre squares of ../shared/data, else the bundled samples)."""
    import numpy as np

    from clasp_engine.images import load_image

    paths = sorted((DATA / "bsds500" / "images").glob("*.jpg")) + sorted((DATA / "cocostuff" / "images").glob("*"))
    if paths:
        sources = [load_image(p) for p in paths[:n]]
    else:
        from sklearn.datasets import load_sample_image

        sources = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    from PIL import Image

    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = np.asarray(Image.fromarray(img[top:top + s, left:left + s]).resize((side, side)))
        out.append(np.ascontiguousarray(crop if i < len(sources) else crop[:, ::-1]))  # repeats mirrored
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, images: list, batch: int, device: str) -> list[dict]:
    import torch

    from clasp_engine import SegmenterConfig
    from clasp_engine.segmenter import Segmenter

    backbone, weights, side, variant = CONFIGS[name]
    config = SegmenterConfig(backbone=backbone, weights=weights, max_side=side, variant=variant, device=device)
    seg = Segmenter(config)
    dev = seg.backbone.device
    label = name + (" (random weights: speed only)" if weights == "random" else "")
    rows = []
    for mode in ("per-image", "batched"):
        seg(images[0])  # warm-up
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev)
        t = time.perf_counter()
        if mode == "per-image":
            results = [seg(img) for img in images]
        else:
            results = []
            for start in range(0, len(images), batch):
                chunk = images[start:start + batch]
                try:
                    results.extend(seg.segment_batch(chunk))
                except TypeError:  # an older checkout without batching beyond the backbone
                    results.extend(seg(img) for img in chunk)
        _sync(dev)
        wall = time.perf_counter() - t
        stage = {s: statistics.fmean(r.diagnostics.timings.get(s, 0.0) for r in results) for s in STAGES}
        rows.append({
            "config": label, "mode": mode, "batch": 1 if mode == "per-image" else batch, "images": len(images),
            "wall": wall, "ips": len(images) / wall, "stage": stage,
            "solver": results[0].diagnostics.solver, "mean_k": statistics.fmean(r.k for r in results),
            "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            "device": str(dev),
        })
    return rows


def print_table(rows: list[dict]) -> None:
    head = ["config", "mode", "B", "img/s"] + [s[:6] for s in STAGES] + ["solver", "K"]
    gpu = any(r["peak_gib"] is not None for r in rows)
    if gpu:
        head += ["peak GiB", "GPU-h/1M img"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["config"], r["mode"], str(r["batch"]), f"{r['ips']:.2f}"]
        cells += [f"{r['stage'][s] * 1000:.1f}" for s in STAGES]
        cells += [r["solver"], f"{r['mean_k']:.1f}"]
        if gpu:
            cells += [f"{r['peak_gib']:.2f}", f"{1e6 / r['ips'] / 3600:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print("(stage columns: ms per image; a batch's stage time is shared by its images)")


def solver_table(device: str, batch: int) -> None:
    """Each eigensolver on batches of real-sized random-feature graphs, on the device."""
    import numpy as np
    import torch

    from clasp_engine.graph import affinity_batch, leading_eigenpairs_batch, normalised_affinity

    dev = torch.device(device)
    print(f"| N | B | solver | ms/graph | max |dλ| vs float64 eigh | ({dev}) |")
    print("|---|---|---|---|---|---|")
    for n in (784, 1024, 3136):  # S/16, S/14 and S/8 grids at 448
        gen = torch.Generator().manual_seed(0)
        W = affinity_batch(torch.randn(batch, n, 64, generator=gen).to(dev) + 0.5)
        ref = torch.linalg.eigvalsh(normalised_affinity(W.double())).flip(-1)[:, :20].cpu().numpy()
        solvers = ["dense", "subspace"] + (["lanczos"] if dev.type == "cpu" else ["lobpcg"])
        for solver in solvers:
            leading_eigenpairs_batch(W[:1], 20, solver=solver)  # warm-up
            _sync(dev)
            t = time.perf_counter()
            spectra = leading_eigenpairs_batch(W, 20, solver=solver)
            _sync(dev)
            ms = (time.perf_counter() - t) / batch * 1000
            err = max(float(np.abs(s.eigenvalues - r).max()) for s, r in zip(spectra, ref))
            print(f"| {n} | {batch} | {spectra[0].solver} | {ms:.1f} | {err:.1e} | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), help="configurations to run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=8, help="images per configuration (default 8)")
    parser.add_argument("--batch", type=int, default=8, help="images per segment_batch call (default 8)")
    parser.add_argument("--gpu", action="store_true", help="the issue's GPU configurations (ViT-S/8, S/14-reg, S/16)")
    parser.add_argument("--quick", action="store_true", help="one small configuration, 2 images, batch 2")
    parser.add_argument("--solvers", action="store_true", help="also time every eigensolver on the device")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 1
    names = args.configs or (QUICK if args.quick else GPU_DEFAULT if args.gpu else CPU_DEFAULT)
    n_images, batch = (2, 2) if args.quick else (args.images, args.batch)
    images = decoded_images(n_images, 448)
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{n_images} decoded images, {images[0].shape[1]}x{images[0].shape[0]}, on {where}")
    rows = []
    for name in names:
        rows.extend(measure(name, images, batch, args.device))
        print_table(rows[-2:])  # as it goes: a long run killed by a time limit keeps what it measured
        sys.stdout.flush()
    if len(names) > 1:
        print("\nall configurations:")
        print_table(rows)
    if args.solvers:
        solver_table(args.device, batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
