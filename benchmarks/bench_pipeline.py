"""End-to-end speed of `clasp run` and the share of time spent outside the engine.

Runs the real command (`clasp run ... --json`) in a subprocess, on a fresh SQLite
database each time, and reads the segment flow's own accounting:

- images/s end to end: segmented images / wall time of the `segment` flow
  (claim, read, decode, engine, store, overlays, Prefect task runs, artifacts);
  and / wall time of the whole command (Prefect's local server start included);
- engine time: the sum over images of the engine's own `timings["total"]`;
- outside-engine share: 1 - engine time / segment-flow wall time;
- overhead vs engine: (segment wall - engine time - model load) / engine time,
  i.e. what orchestration, database and image I/O add per image (the target is
  under 10% at batch size 16). Model load happens once per worker process and
  is reported separately.

Examples::

    python benchmarks/bench_pipeline.py --samples
    python benchmarks/bench_pipeline.py --images 50 --backbone classic --backbone dino_vits16 --weights random
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_images(n: int, scratch: Path) -> list[str]:
    """n images from ../shared/data; beyond the ~53 there, copies under new names (registered as new images)."""
    paths = sorted(p for p in SHARED_DATA.glob("*/images/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"no images under {SHARED_DATA}")
    if n <= len(paths):
        return [str(p) for p in paths[:n]]
    scratch.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = paths[i % len(paths)]
        dst = scratch / f"{i:05d}-{src.name}"
        shutil.copyfile(src, dst)
        out.append(str(dst))
    return out


def run_once(workdir: Path, source_args: list[str], backbone: str, weights: str | None, variant: str,
             batch_size: int, max_side: int | None, overlays: bool, prefect_home: Path) -> dict:
    db = workdir / "bench.db"
    for f in workdir.glob("bench.db*"):
        f.unlink()
    cmd = [str(REPO / ".venv" / "bin" / "clasp") if (REPO / ".venv" / "bin" / "clasp").exists() else "clasp",
           "run", *source_args, "--backbone", backbone, "--variant", variant, "--batch-size", str(batch_size),
           "--database-url", f"sqlite:///{db}", "--out", str(workdir / "out"), "--json", "--quiet", "--no-review"]
    if weights:
        cmd += ["--weights", weights]
    if max_side:
        cmd += ["--max-side", str(max_side)]
    if not overlays:
        cmd.append("--no-overlays")
    env = dict(os.environ, PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.pop("PREFECT_API_URL", None)
    env.pop("LABEL_STUDIO_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    command_wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = proc.stdout
    result = json.loads(out[out.index("{"):])
    seg = result["segment"]
    seg["command_wall_seconds"] = command_wall
    return seg


BASELINE = r"""
import json, sys, time
from clasp_engine import Segmenter
from clasp_engine.images import load_image
from integrations.settings import load_settings
uris, backbone, weights, variant, batch, max_side = json.loads(sys.argv[1])
kw = dict(backbone=backbone, variant=variant, weights=weights)
if max_side:
    kw["max_side"] = max_side
seg = Segmenter(load_settings(**kw).engine_config())
images = [load_image(u) for u in uris]
t = time.perf_counter()
for i in range(0, len(images), batch):
    seg.segment_batch(images[i:i + batch])
print(json.dumps({"engine_alone_seconds": time.perf_counter() - t, "images": len(images)}))
"""


def engine_alone(uris: list[str], backbone: str, weights: str | None, variant: str, batch: int,
                 max_side: int | None) -> float:
    """Seconds the engine alone takes on the same decoded images, same batches (no Prefect, no SQL, no I/O)."""
    py = REPO / ".venv" / "bin" / "python"
    proc = subprocess.run([str(py) if py.exists() else sys.executable, "-c", BASELINE,
                           json.dumps([uris, backbone, weights, variant, batch, max_side])],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["engine_alone_seconds"]


def row(label: str, seg: dict) -> dict:
    done = seg["done"]
    io = seg["io_seconds"]
    engine = seg["engine_seconds"]
    wall = seg["wall_seconds"]
    outside = {k: v / done for k, v in io.items() if k not in ("engine_wall", "model_load")} if done else {}
    return {
        "config": label,
        "images": done,
        "failed": seg["failed"],
        "command_s": round(seg["command_wall_seconds"], 1),
        "segment_flow_s": round(wall, 2),
        "images_per_s_flow": round(done / wall, 3) if wall else None,
        "images_per_s_command": round(done / seg["command_wall_seconds"], 3),
        "engine_s_per_image": round(engine / done, 4) if done else None,
        "model_load_s": round(seg.get("model_load_seconds", 0.0), 2),
        "outside_engine_share": round(seg["outside_engine_share"], 3) if seg["outside_engine_share"] is not None else None,
        "overhead_vs_engine": round(seg["overhead_vs_engine"], 3) if seg.get("overhead_vs_engine") is not None else None,
        "engine_alone_s_per_image": None,
        "overhead_vs_engine_alone": None,
        "outside_s_per_image": {k: round(v, 4) for k, v in outside.items()},
        "stage_s_per_image": {k: round(v, 4) for k, v in seg["seconds_per_image_per_stage"].items()},
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", action="store_true", help="the bundled sample photos (3)")
    ap.add_argument("--images", type=int, default=0, help="this many images from ../shared/data")
    ap.add_argument("--backbone", action="append", help="repeatable (default: classic)")
    ap.add_argument("--weights", help="e.g. 'random' for the ViT backbones (applies to non-classic backbones)")
    ap.add_argument("--variant", default="pixel", choices=("patch", "pixel"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-side", type=int)
    ap.add_argument("--no-overlays", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the engine alone on the same images and batches (no Prefect, SQL or I/O)")
    args = ap.parse_args(argv)
    if not args.samples and not args.images:
        args.samples = True

    backbones = args.backbone or ["classic"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="clasp-bench-") as tmp:
        tmp_path = Path(tmp)
        prefect_home = tmp_path / "prefect"  # one local Prefect history for all runs (restart ~5 s)
        prefect_home.mkdir()
        sources: list[tuple[str, list[str], list[str]]] = []
        if args.samples:
            sys.path.insert(0, str(REPO))
            from integrations.samples import sample_image_paths

            sources.append(("samples(3)", ["--samples"], [str(p) for p in sample_image_paths()]))
        if args.images:
            listing = tmp_path / "images.txt"
            uris = shared_images(args.images, tmp_path / "copies")
            listing.write_text("\n".join(uris) + "\n")
            sources.append((f"shared({args.images})", [str(listing)], uris))
        for name, source_args, uris in sources:
            for backbone in backbones:
                weights = args.weights if backbone != "classic" else None
                label = f"{name} {backbone}{'/' + weights if weights else ''} {args.variant} bs={args.batch_size}"
                work = tmp_path / "work"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                seg = run_once(work, source_args, backbone, weights, args.variant, args.batch_size,
                               args.max_side, not args.no_overlays, prefect_home)
                r = row(label, seg)
                if args.baseline:
                    alone = engine_alone(uris, backbone, weights, args.variant, args.batch_size, args.max_side)
                    r["engine_alone_s_per_image"] = round(alone / len(uris), 4)
                    # the flow's wall time, less the one-time model load, against the engine alone
                    r["overhead_vs_engine_alone"] = round(
                        (seg["wall_seconds"] - seg.get("model_load_seconds", 0.0)) / alone - 1.0, 3)
                rows.append(r)
                print(json.dumps(r), flush=True)
    print()
    print("| config | images | command s | segment flow s | img/s (flow) | img/s (command) | engine s/img | "
          "model load s | outside engine | overhead vs engine | engine alone s/img | overhead vs engine alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = pct(r["outside_engine_share"])
        over = pct(r["overhead_vs_engine"])
        alone = pct(r["overhead_vs_engine_alone"])
        print(f"| {r['config']} | {r['images']} | {r['command_s']} | {r['segment_flow_s']} | {r['images_per_s_flow']} | "
              f"{r['images_per_s_command']} | {r['engine_s_per_image']} | {r['model_load_s']} | {share} | {over} | "
              f"{r['engine_alone_s_per_image'] or '-'} | {alone} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
