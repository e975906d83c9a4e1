"""Own brush RLE encoder/decoder vs label-studio-sdk's helpers (why integrations/label_studio/rle.py exists).

Encodes every region of a label map (what one pushed task needs) three ways and
checks that the bytes are identical:
- `sdk`: `label_studio_sdk.converter.brush.mask2rle` on each region's mask (pure Python);
- `mask_rle`: the vectorised encoder, one call per region;
- `label_map_rles`: the vectorised encoder, all regions from one pass over the label map
  (what `build_prediction` uses).
Also decodes one region with the SDK's `decode_rle` and with ours.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_rle.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.label_studio.rle import decode_rle, label_map_rles, mask_rle  # noqa: E402


def voronoi(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    pts = rng.random((k, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    return np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, axis=-1).astype(np.int32)


def best_ms(fn, repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000, out


def main() -> int:
    from label_studio_sdk.converter.brush import decode_rle as sdk_decode
    from label_studio_sdk.converter.brush import mask2rle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = {
        "480x640_10_regions": voronoi(rng, 480, 640, 10),
        "1000x1000_10_regions": voronoi(rng, 1000, 1000, 10),
        "480x640_noise_2_labels": (rng.random((480, 640)) > 0.5).astype(np.int32),
    }
    for name, lab in cases.items():
        values = sorted(set(lab.ravel().tolist()))
        sdk_ms, sdk = best_ms(lambda: {v: mask2rle((lab == v).astype(np.uint8) * 255) for v in values}, args.repeat)
        one_ms, one = best_ms(lambda: {v: mask_rle(lab == v) for v in values}, args.repeat)
        all_ms, allr = best_ms(lambda: label_map_rles(lab, values), args.repeat)
        assert sdk == one == allr, f"{name}: encoders disagree"
        v0 = values[0]
        sdk_dec_ms, a = best_ms(lambda: np.asarray(sdk_decode(sdk[v0])), 1)
        dec_ms, b = best_ms(lambda: decode_rle(sdk[v0]), args.repeat)
        assert np.array_equal(a.astype(np.uint8), b), f"{name}: decoders disagree"
        print(json.dumps({
            "bench": "brush_rle", "case": name, "regions": len(values),
            "encode_ms_sdk_mask2rle": round(sdk_ms, 1), "encode_ms_mask_rle": round(one_ms, 1),
            "encode_ms_label_map_rles": round(all_ms, 1), "speedup_vs_sdk": round(sdk_ms / all_ms, 1),
            "decode_ms_sdk": round(sdk_dec_ms, 1), "decode_ms_ours": round(dec_ms, 1), "identical_bytes": True,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
