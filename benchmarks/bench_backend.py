"""ML backend latency per image: POST /predict over HTTP, one task per request, as Label Studio sends them.

Serves the backend (uvicorn, in a thread of this process; the model is loaded once)
and posts the images of ../shared/data as data URLs with the default labeling config.
Prints, per backbone, the model load time and the median / p90 seconds per image.
`--backbones classic dino_vits16 --weights random`: a ViT with random weights
(speed only: its proposals mean nothing).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_backend.py [--images 10] [--backbones classic dino_vits16]
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.label_studio.backend import ImageFetcher, ProposalModel, create_app  # noqa: E402
from integrations.label_studio.config import LabelingConfig  # noqa: E402
from integrations.label_studio.server import free_port  # noqa: E402


def main() -> int:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--backbones", nargs="+", default=["classic", "dino_vits16"])
    ap.add_argument("--weights", default="random", help="weights for the ViT backbones (default: random)")
    args = ap.parse_args()
    files = sorted(p for p in args.data.glob("*/images/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = files[:: max(1, len(files) // args.images)][: args.images]
    urls = [f"data:{mimetypes.guess_type(p.name)[0]};base64," + base64.b64encode(p.read_bytes()).decode() for p in files]
    config = LabelingConfig().xml()
    for backbone in args.backbones:
        weights = None if backbone == "classic" else args.weights
        model = ProposalModel(backbone=backbone, weights=weights, fetcher=ImageFetcher(None))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        seconds, regions = [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as h:
            h.post("/predict", json={"tasks": [{"id": 0, "data": {"image": urls[0]}}], "label_config": config})  # warm-up
            for i, url in enumerate(urls):
                t = time.perf_counter()
                out = h.post("/predict", json={"tasks": [{"id": i, "data": {"image": url}}], "label_config": config}).json()
                seconds.append(time.perf_counter() - t)
                assert out["results"][0], out.get("errors")
                regions.append(len(out["results"][0][0]["result"]))
        server.should_exit = True
        thread.join(timeout=10)
        print(json.dumps({
            "bench": "ml_backend_predict", "backbone": backbone, "weights": weights or "n/a (classic)",
            "images": len(urls), "load_seconds": round(model.load_seconds, 2),
            "seconds_per_image_median": round(float(np.median(seconds)), 3),
            "seconds_per_image_p90": round(float(np.percentile(seconds, 90)), 3),
            "regions_mean": round(float(np.mean(regions)), 1), "model_version": model.model_version,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
