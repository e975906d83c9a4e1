"""`clasp segment PATH... --out DIR`: region proposals for image files and folders.

Per image writes DIR/<stem>.png (label map: 8-bit when K <= 255, else 16-bit),
DIR/<stem>.json (diagnostics + segments), DIR/<stem>_overlay.jpg and, with
--plots, DIR/<stem>_spectrum.png. An unreadable image is reported and skipped;
the exit code is 1 if any image failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders (images found by extension)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    parser.add_argument("--backbone", help="auto, classic, dino_vits8, dino_vits16, dino_vitb8, dino_vitb16, "
                                           "dinov2_vits14, dinov2_vits14_reg (default: CLASP_BACKBONE or auto)")
    parser.add_argument("--weights", metavar="FILE|random", help="weights file, or 'random' (speed tests only)")
    parser.add_argument("--variant", choices=("patch", "pixel"), help="patch grid, or DenseCRF pixel edges")
    parser.add_argument("--max-side", type=int, metavar="N", help="long side the backbone sees, pixels")
    parser.add_argument("--k", type=int, metavar="N", help="fixed number of segments (skips the K search)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--features", choices=("tokens", "keys"))
    parser.add_argument("--plots", action="store_true", help="also write <stem>_spectrum.png (eigengaps, silhouette)")
    parser.add_argument("--samples", action="store_true", help="add the bundled sample photos")
    parser.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                        help="images per engine batch: images of one working size go through every stage "
                             "together (default 1; results are the same for any N)")


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: give a whole number of images, 1 or more")
    return value


def image_paths(paths: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given, folders expanded to their images (sorted); missing paths are errors."""
    found: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        elif p.is_file():
            found.append(p)
        else:
            missing.append((p, "no such file or folder"))
    return found, missing


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stems; a repeated stem (same name in two folders) gets a numeric suffix."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}_{n}")
    return stems


def write_outputs(result, image, out: Path, stem: str, plots: bool) -> None:
    import numpy as np
    from PIL import Image

    from clasp_engine.render import overlay, spectrum_figure

    labels = result.labels
    if result.k <= 255:
        Image.fromarray(labels.astype(np.uint8), mode="L").save(out / f"{stem}.png")
    else:
        Image.fromarray(labels.astype(np.uint16)).save(out / f"{stem}.png")
    (out / f"{stem}.json").write_text(json.dumps(result.to_dict(), indent=1))
    Image.fromarray(overlay(image, labels)).save(out / f"{stem}_overlay.jpg", quality=90)
    if plots:
        spectrum_figure(result.diagnostics, title=stem).savefig(out / f"{stem}_spectrum.png")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clasp_cli import options
    from clasp_engine.errors import ClaspError, InvalidImageError
    from clasp_engine.images import load_image
    from clasp_engine.segmenter import Segmenter

    # Flags over CLASP_* variables, every one checked: an invalid one stops here (exit 2, one line each).
    config = options.load(args).engine_config()
    options.check_writable_folder(args.out, "--out")
    paths, failures = image_paths(list(args.paths))
    if args.samples:
        from integrations.samples import sample_image_paths

        paths.extend(sample_image_paths())
    for p, reason in failures:
        print(f"error: {p}: {reason}", file=sys.stderr)
    if not paths:
        print("error: no images to segment (give files, folders or --samples)", file=sys.stderr)
        return 1

    try:
        # The engine warns (warnings + logging) for library users; here the CLI
        # prints each of segmenter.warnings once itself, below.
        logging.getLogger("clasp_engine").addHandler(logging.NullHandler())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            segmenter = Segmenter(config)
    except ClaspError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    bb = segmenter.backbone
    print(f"backbone: {bb.name} (patch {bb.patch_size}) on {bb.device}; weights: {bb.weights.describe()}"
          + (f" sha256 {bb.weights.sha256[:12]}" if bb.weights.sha256 else ""))
    for w in segmenter.warnings:
        loud = any(word in w.lower() for word in ("random", "fallback", "falling back"))
        banner = "!" * 72 + "\n" if loud else ""
        print(f"{banner}WARNING: {w}\n{banner}", file=sys.stderr)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    n_failed = len(failures)
    segmenter.max_batch = args.batch_size
    jobs = list(zip(paths, unique_stems(paths)))
    with tqdm(total=len(jobs), desc="segment", unit="img", file=sys.stderr) as progress:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start:start + args.batch_size]
            # Decoded inside the engine, so the "load" timing is real; each bad image fails alone.
            results = segmenter.segment_batch([path for path, _ in chunk], errors="return")
            for (path, stem), result in zip(chunk, results):
                try:
                    if isinstance(result, BaseException):
                        raise result
                    image = load_image(path)  # again, for the overlay: cheaper than plumbing the array out
                    write_outputs(result, image, out, stem, args.plots)
                except (ClaspError, OSError) as exc:
                    n_failed += 1
                    reason = exc.reason if isinstance(exc, InvalidImageError) else str(exc) or type(exc).__name__
                    tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
                progress.update(1)
    n_ok = len(paths) + len(failures) - n_failed
    print(f"{n_ok} segmented, {n_failed} failed -> {out}")
    return 1 if n_failed else 0
