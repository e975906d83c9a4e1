"""How often touching proposals get different colours, over ../shared/data (engine: classic).

For every image: segment, build the Label Studio prediction exactly as the push does
(default RegionPolicy and LabelingConfig: proposal labels region-1..6 from greedy
colouring), then count region pairs that touch (4-connectivity) and how many of them
carry different labels, i.e. are drawn in different colours. Also times the colouring.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_colours.py [--data ../shared/data] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.label_studio.config import LabelingConfig  # noqa: E402
from integrations.label_studio.predictions import RegionPolicy, region_adjacency, build_prediction, colour_regions  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--limit", type=int, default=0, help="images per dataset (0: all)")
    args = ap.parse_args()
    from clasp_engine import Segmenter, SegmenterConfig

    seg = Segmenter(SegmenterConfig(backbone="classic", variant="pixel"))
    cfg, policy = LabelingConfig(), RegionPolicy()
    pairs = differ = images = regions = 0
    colour_ms: list[float] = []
    per_set: dict[str, list[int]] = {}
    for images_dir in sorted(args.data.glob("*/images")):
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for path in files[: args.limit or None]:
            s = seg(str(path))
            built = build_prediction(s.labels, {x.label: x.confidence for x in s.segments},
                                     model_version="bench", config=cfg, policy=policy)
            # the region map as pushed (after merging small segments) and each region's label
            group = np.full(int(s.labels.max()) + 1, -1)
            for i, r in enumerate(built.regions):
                group[list(r.labels)] = i
            rmap = group[s.labels.astype(np.int64)]
            name = [x["value"]["brushlabels"][0] for x in built.prediction["result"]]
            adj = region_adjacency(np.where(rmap >= 0, rmap, len(name)), len(name) + 1)[:-1, :-1]
            t = time.perf_counter()
            colour_regions(rmap, list(range(len(name))), len(cfg.palette))
            colour_ms.append((time.perf_counter() - t) * 1000)
            touching = [(a, b) for a in range(len(name)) for b in range(a + 1, len(name)) if adj[a, b] > 0]
            d = sum(name[a] != name[b] for a, b in touching)
            pairs += len(touching)
            differ += d
            images += 1
            regions += len(name)
            ps = per_set.setdefault(images_dir.parent.name, [0, 0])
            ps[0] += len(touching)
            ps[1] += d
    print(json.dumps({
        "bench": "proposal_colours", "engine": "classic", "images": images, "regions": regions,
        "touching_pairs": pairs, "different_colours": differ,
        "share_different": round(differ / pairs, 4) if pairs else None,
        "per_dataset": {k: {"touching_pairs": v[0], "different": v[1]} for k, v in per_set.items()},
        "colouring_ms_median": round(float(np.median(colour_ms)), 2) if colour_ms else None,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
