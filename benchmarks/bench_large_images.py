"""Peak memory of one worker batch of large JPEGs: full decode vs `Image.draft` decode.

    python benchmarks/bench_large_images.py [--n 6] [--side 9000] [--engine]

Writes N side x side JPEGs (smooth content, about 1 MB each: under the default
pixel cap of 100 MP), then, in a fresh process per mode, does what a worker's
`prepare_batch` does (decode every image of the batch and hold them) and, with
--engine, segments the batch (classic backbone, default variant). Prints each
mode's peak RSS (the child's VmHWM) and wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from clasp_engine.images import load_image
paths, draft_side, engine = {paths!r}, {draft!r}, {engine!r}
t0 = time.perf_counter()
images = [load_image(open(p, "rb").read(), draft_side=draft_side, name=p) for p in paths]
decoded = time.perf_counter() - t0
shapes = [list(i.shape) for i in images]
def peak_mb():
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
rss_decode = peak_mb()
if engine:
    from clasp_engine import Segmenter
    from clasp_engine.config import SegmenterConfig
    seg = Segmenter(SegmenterConfig(backbone="classic", device="cpu"))
    results = seg.segment_batch(images)
print(json.dumps(dict(decode_s=decoded, total_s=time.perf_counter() - t0, shapes=shapes,
                      rss_after_decode_mb=rss_decode, peak_rss_mb=peak_mb())))
"""


def make_images(folder: Path, n: int, side: int) -> list[str]:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    paths = []
    for i in range(n):
        rgb = np.stack([(x * 255), (y * 255), ((x + y + i / n) % 1.0) * 255], axis=2).astype(np.uint8)
        path = folder / f"large-{i}.jpg"
        Image.fromarray(rgb).save(path, "JPEG", quality=85)
        paths.append(str(path))
        del rgb
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--side", type=int, default=9000)
    ap.add_argument("--draft-side", type=int, default=4096,
                    help="decode side (default 4096: flows.segment.FULL_DECODE_SIDE, what a worker uses)")
    ap.add_argument("--engine", action="store_true", help="also segment the batch")
    ap.add_argument("--folder", type=Path, help="keep (and reuse) the generated JPEGs here")
    ap.add_argument("--only", choices=("before", "after"), help="run one mode only")
    args = ap.parse_args()
    repo = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(str(p) for p in folder.glob("large-*.jpg"))
        paths = existing if len(existing) == args.n else make_images(folder, args.n, args.side)
        sizes = [Path(p).stat().st_size / 1e6 for p in paths]
        print(f"{args.n} JPEGs of {args.side}x{args.side}, {min(sizes):.2f}-{max(sizes):.2f} MB each")
        modes = {"before": ("full decode (before)", None), "after": (f"draft to >= {args.draft_side} (after)", args.draft_side)}
        for key, (label, draft) in modes.items():
            if args.only and key != args.only:
                continue
            code = CHILD.format(repo=repo, paths=paths, draft=draft, engine=args.engine)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{label}: failed (rc {proc.returncode}): {proc.stderr[-800:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{label:32s} decoded {r['shapes'][0][1]}x{r['shapes'][0][0]}  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB (after decode {r['rss_after_decode_mb']:.0f} MB)  "
                f"decode {r['decode_s']:.1f} s, total {r['total_s']:.1f} s, wall {time.perf_counter() - t0:.1f} s"
            )


if __name__ == "__main__":
    main()
