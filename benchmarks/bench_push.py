"""Bulk push throughput into a real Label Studio: 100 images x 10 regions (target >= 20 tasks/s).

Starts a throw-away Label Studio (own venv, loopback, temp data dir) unless
LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY point at one. Prints one JSON line:
tasks/s over the whole push (key reconcile, RLE encoding, bulk import, prediction
ids), the time spent encoding, and the number of import requests.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_push.py [--images 100] [--regions 10] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.label_studio.client import LabelStudioClient  # noqa: E402
from integrations.label_studio.config import LabelingConfig  # noqa: E402
from integrations.label_studio.images import ImageResolver  # noqa: E402
from integrations.label_studio.push import PushItem, push_segmentations  # noqa: E402


def voronoi_labels(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    pts = rng.random((k, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return np.argmin(d, axis=-1).astype(np.int32)


def run(client: LabelStudioClient, n_images: int, n_regions: int, tag: str) -> dict:
    rng = np.random.default_rng(0)
    project = client.find_or_create_project(f"CLASP push bench {tag}", LabelingConfig().xml())
    items = [
        PushItem(i, f"https://images.example.com/{i}.jpg", voronoi_labels(rng, 480, 640, n_regions), f"bench-{tag}")
        for i in range(n_images)
    ]
    t0 = time.perf_counter()
    r = push_segmentations(client, project, items, batch_size=50, resolver=ImageResolver(mode="url"))
    total = time.perf_counter() - t0
    assert r.ok and len(r.sent) == n_images, r.summary()
    return {
        "tasks": n_images,
        "regions": sum(x.n_regions or 0 for x in r.sent),
        "seconds": round(total, 3),
        "tasks_per_second": round(n_images / total, 1),
        "encode_seconds": round(r.encode_seconds, 3),
        "import_requests": r.import_requests,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--regions", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    server = None
    if os.environ.get("LABEL_STUDIO_URL") and os.environ.get("LABEL_STUDIO_API_KEY"):
        url, token = os.environ["LABEL_STUDIO_URL"], os.environ["LABEL_STUDIO_API_KEY"]
    else:
        from integrations.label_studio.server import LocalLabelStudio, free_port

        server = LocalLabelStudio(Path(tempfile.mkdtemp(prefix="clasp-bench-ls-")), port=free_port())
        creds = server.start(timeout=240)
        url, token = creds.url, creds.token()
    try:
        with LabelStudioClient(url, token) as client:
            for i in range(args.repeat):
                fig = run(client, args.images, args.regions, f"{int(time.time())}-{i}")
                print(json.dumps({"bench": "label_studio_push", "run": i, **fig}), flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
