"""`clasp eval DATASET_DIR`: score segmentations on a labelled dataset the way the field does.

Runs the engine on every image of the dataset (or reads existing label maps with
`--predictions PRED_DIR`, `PRED_DIR/<id>.png`) and scores them:

* class datasets (a `classes.txt`): per-image Hungarian matching, TP/FP/FN summed
  over the dataset: mIoU and pixel accuracy;
* class-agnostic datasets (BSDS500): segmentation covering, PRI and VI against
  every annotator (`labels_all/`).

Prints a short table; `--json OUT` writes the full report (aggregates and one
entry per image), `--report DIR` writes the report and its figures.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from clasp_engine.config import BACKBONES, DEVICES, FEATURES, VARIANTS
from clasp_engine.errors import ClaspError, InvalidImageError
from clasp_engine.evaluation.metrics import (
    ClassTotals,
    RegionScores,
    aggregate_region,
    class_scores,
    finite_or_none,
    region_match,
    region_scores,
)
from clasp_engine.evaluation.protocols import PROTOCOLS, resize_image, resize_nearest

PROTOCOL_CHOICES = ("auto", *PROTOCOLS)
GRID_SIDE = 320  # long side of the pictures kept for the best / worst grid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET_DIR",
                        help="folder with images/, labels/ and classes.txt (or labels_all/ for BSDS500)")
    seg = parser.add_argument_group("segment options (as in `clasp segment`; ignored with --predictions)")
    seg.add_argument("--backbone", choices=BACKBONES, help="feature extractor (default: auto)")
    seg.add_argument("--weights", help="weights file, or 'random' (speed only)")
    seg.add_argument("--variant", choices=VARIANTS, help="patch labels upsampled, or pixel-level refinement")
    seg.add_argument("--max-side", type=int, help="long side the backbone sees, in pixels")
    seg.add_argument("--k", type=int, help="fixed number of segments (default: chosen per image)")
    seg.add_argument("--device", choices=DEVICES, help="auto, cpu or cuda")
    seg.add_argument("--features", choices=FEATURES, help="ViT tokens or attention keys")
    parser.add_argument("--predictions", metavar="PRED_DIR",
                        help="score existing label maps PRED_DIR/<id>.png instead of running the engine")
    parser.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="auto",
                        help="preprocessing preset: diffseg (centre crop, 512×512), diffcut (centre crop, "
                             "scored at 128×128), native (full image). auto: diffseg for class datasets, "
                             "native for class-agnostic ones (the BSDS500 benchmark's own setting)")
    parser.add_argument("--limit", type=int, metavar="N", help="score only the first N pairs")
    parser.add_argument("--json", metavar="OUT", help="write the JSON report here ('-' for stdout)")
    parser.add_argument("--report", metavar="DIR", help="write eval.json and the report figures into DIR")
    parser.add_argument("--save-predictions", metavar="DIR",
                        help="also save the engine's label maps as DIR/<id>.png (at the size the engine saw)")
    parser.add_argument("--grid", type=int, default=3, metavar="N",
                        help="best and worst images shown in the report grid (default 3 each)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from clasp_cli import evaluate_suggestions  # issue 12: --suggestions, --reviewed-fraction, --seed

    evaluate_suggestions.add_arguments(parser)


def _err(msg: str) -> None:
    print(f"clasp eval: {msg}", file=sys.stderr)


def _thumb_shape(h: int, w: int) -> tuple[int, int]:
    s = min(1.0, GRID_SIDE / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


class _Extremes:
    """Keeps the N best and N worst images (small pictures) without holding the whole dataset."""

    def __init__(self, n: int):
        self.n = max(0, n)
        self.best: list = []  # min-heap on score
        self.worst: list = []  # min-heap on -score
        self._tick = itertools.count()

    def wants(self, score: float) -> bool:
        if self.n == 0 or not np.isfinite(score):
            return False
        return (len(self.best) < self.n or score > self.best[0][0]
                or len(self.worst) < self.n or -score > self.worst[0][0])

    def add(self, score: float, row: Any) -> None:
        t = next(self._tick)
        for heap, key in ((self.best, score), (self.worst, -score)):
            if len(heap) < self.n:
                heapq.heappush(heap, (key, t, row))
            elif key > heap[0][0]:
                heapq.heapreplace(heap, (key, t, row))

    def rows(self) -> tuple[list, list]:
        best = [r for _, _, r in sorted(self.best, key=lambda e: -e[0])]
        worst = [r for _, _, r in sorted(self.worst, key=lambda e: -e[0])]
        # with few images the two lists overlap; show each image once
        best_ids = {r.image_id for r in best}
        worst = [r for r in worst if r.image_id not in best_ids]
        return best, worst


def run(args: argparse.Namespace) -> int:
    from integrations.datasets import (
        DatasetError,
        PairError,
        load_labels,
        open_dataset,
        prediction_path,
        read_image,
        read_label_map,
        write_label_map,
    )

    if getattr(args, "suggestions", False):  # issue 12: simulated reviews and label suggestions
        from clasp_cli import evaluate_suggestions

        return evaluate_suggestions.run(args)
    started = time.perf_counter()
    try:
        ds = open_dataset(args.dataset)
    except DatasetError as exc:
        _err(str(exc))
        return 2
    if args.limit is not None and args.limit < 1:
        _err(f"--limit {args.limit}: must be at least 1")
        return 2
    protocol_name = args.protocol
    if protocol_name == "auto":
        protocol_name = "diffseg" if ds.kind == "class" else "native"
    protocol = PROTOCOLS[protocol_name]

    segmenter = None
    config = None
    pred_dir = None
    if args.predictions:
        pred_dir = Path(args.predictions)
        if not pred_dir.is_dir():
            _err(f"--predictions {pred_dir}: not a folder (expected PRED_DIR/<id>.png)")
            return 2
    else:
        built = build_segmenter(args)
        if isinstance(built, int):
            return built
        config, segmenter = built
    load_seconds = time.perf_counter() - started

    pairs = ds.pairs[: args.limit] if args.limit else ds.pairs
    skipped: list[dict[str, str]] = [{"id": i, "reason": r} for i, r in ds.unpaired]
    per_image: list[dict[str, Any]] = []
    totals = ClassTotals(ds.n_classes) if ds.kind == "class" else None
    region_list: list[RegionScores] = []
    extremes = _Extremes(args.grid if args.report else 0)
    engine_info: dict[str, Any] = {}
    save_dir = Path(args.save_predictions) if args.save_predictions and segmenter is not None else None

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    show = not args.no_progress and tqdm is not None
    bar = tqdm(pairs, desc=f"eval {ds.name}", unit="img", disable=not show, file=sys.stderr) if tqdm else pairs

    def skip(image_id: str, reason: str) -> None:
        skipped.append({"id": image_id, "reason": reason})
        msg = f"skipped {image_id}: {reason}"
        if show:
            tqdm.write(f"clasp eval: {msg}", file=sys.stderr)
        else:
            _err(msg)

    for pair in bar:
        try:
            image = read_image(pair.image_path)
        except InvalidImageError as exc:
            skip(pair.image_id, f"unreadable image: {exc.reason}")
            continue
        h, w = image.shape[:2]
        try:
            gts_raw = load_labels(pair, (h, w))
        except PairError as exc:
            skip(pair.image_id, exc.reason)
            continue
        gts = [protocol.labels(g) for g in gts_raw]

        seconds: float | None = None
        if segmenter is not None:
            engine_image = protocol.engine_image(image)
            try:
                result = segmenter(engine_image)
            except ClaspError as exc:
                skip(pair.image_id, f"engine failed: {exc}")
                continue
            seconds = float(result.diagnostics.timings["total"])  # every stage, always reported
            pred_raw = np.asarray(result.labels)
            k = int(result.k)
            if not engine_info:
                d = result.diagnostics
                engine_info = {"engine_version": d.engine_version, "backbone": d.backbone, "weights": d.weights,
                               "device": d.device, "variant": d.variant}
            if save_dir is not None:
                write_label_map(save_dir / f"{pair.image_id}.png", pred_raw)
        else:
            path = prediction_path(pred_dir, pair.image_id)
            if not path.is_file():
                skip(pair.image_id, f"no prediction {path.name} in {pred_dir}")
                continue
            try:
                pred_raw = read_label_map(path)
            except InvalidImageError as exc:
                skip(pair.image_id, f"unreadable prediction: {exc.reason}")
                continue
            k = int(np.unique(pred_raw).size)
        try:
            pred = protocol.prediction(pred_raw, (h, w))
        except ValueError as exc:
            skip(pair.image_id, str(exc))
            continue

        try:
            if ds.kind == "class":
                s = class_scores(gts[0], pred, ds.n_classes)
                totals.add(s)
                score = s.miou
                metrics = {"miou": finite_or_none(s.miou), "pixel_accuracy": finite_or_none(s.pixel_accuracy)}
                n_gt = s.n_gt_classes
                seg_to_class = s.segment_to_class
            else:
                r = region_scores(pred, gts)
                region_list.append(r)
                score = r.covering
                metrics = {"covering": finite_or_none(r.covering), "pri": finite_or_none(r.pri),
                           "vi": finite_or_none(r.vi)}
                n_gt = r.n_gt_classes
                seg_to_class = None
        except ValueError as exc:
            skip(pair.image_id, f"cannot be scored: {exc}")
            continue

        per_image.append({"id": pair.image_id, "k": k, "n_gt_classes": n_gt, "metrics": metrics,
                          "seconds": None if seconds is None else round(seconds, 4)})
        if extremes.wants(score):
            extremes.add(score, _grid_row(pair.image_id, score, k, image, gts[0], pred, seg_to_class, protocol))

    wall_seconds = time.perf_counter() - started
    report = _report(args, ds, protocol, per_image, skipped, totals, region_list, config, engine_info,
                     wall_seconds, load_seconds)
    # with `--json -` the JSON owns stdout; the table goes to stderr
    table_out = sys.stderr if args.json == "-" else sys.stdout
    _print_table(report, table_out)

    if args.json:
        write_json_report(report, args.json, sys.stdout)
    if args.report:
        out_dir = Path(args.report)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        figures = _figures(report, extremes, out_dir)
        print(f"figures  {out_dir}: eval.json, {', '.join(p.name for p in figures)}", file=table_out)
    if not per_image:
        _err("no image could be scored")
        return 1
    return 0


def _grid_row(image_id, score, k, image, gt, pred, seg_to_class, protocol):
    from clasp_engine.evaluation.figures import GridRow, recolour_prediction

    if seg_to_class is None:  # class-agnostic: colour each segment like the region it is matched to
        seg_to_class = region_match(pred, gt)
    img = protocol.engine_image(image)
    th, tw = _thumb_shape(*gt.shape)
    return GridRow(
        image_id=image_id, score=float(score), k=k,
        image=resize_image(img, (th, tw)),
        gt=resize_nearest(gt, (th, tw)),
        pred=resize_nearest(recolour_prediction(pred, seg_to_class), (th, tw)),
    )


def _report(args, ds, protocol, per_image, skipped, totals, region_list, config, engine_info, wall_seconds,
            load_seconds) -> dict[str, Any]:
    ks = [r["k"] for r in per_image]
    secs = [r["seconds"] for r in per_image if r["seconds"] is not None]
    n_gt = [r["n_gt_classes"] for r in per_image]
    rep: dict[str, Any] = {
        "dataset": ds.name,
        "dataset_dir": str(ds.root.resolve()),
        "kind": ds.kind,
        "protocol": protocol.name,
        "protocol_description": protocol.description,
        "source": "predictions" if args.predictions else "engine",
        "n_images": len(per_image),
        "n_skipped": len(skipped),
        "skipped": skipped,
    }
    if ds.kind == "class":
        iou = totals.iou
        rep.update({
            "n_classes": ds.n_classes,
            "miou": finite_or_none(totals.miou),
            "pixel_accuracy": finite_or_none(totals.pixel_accuracy),
            "iou_per_class": {name: finite_or_none(v) for name, v in zip(ds.class_names, iou)},
            "n_classes_scored": int(np.sum(~np.isnan(iou))),
        })
    else:
        agg = aggregate_region(region_list)
        rep.update({"covering": finite_or_none(agg.covering), "pri": finite_or_none(agg.pri),
                    "vi": finite_or_none(agg.vi)})
    rep.update({
        "mean_k": finite_or_none(float(np.mean(ks))) if ks else None,
        "mean_gt_classes": finite_or_none(float(np.mean(n_gt))) if n_gt else None,
        "seconds_per_image": finite_or_none(float(np.mean(secs))) if secs else None,
        "wall_seconds": round(wall_seconds, 3),
        "startup_seconds": round(load_seconds, 3),
    })
    if args.predictions:
        rep["predictions_dir"] = str(Path(args.predictions).resolve())
    else:
        rep["config"] = config.to_dict()
        rep["config_fingerprint"] = config.fingerprint()
        rep["engine"] = engine_info
    rep["images"] = per_image
    return rep


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f} %"


def build_segmenter(args: argparse.Namespace) -> tuple[Any, Any] | int:
    """(config, Segmenter) from the flags over the CLASP_* variables, or the exit status after saying why."""
    from clasp_cli import options

    try:
        config = options.load(args).engine_config()
    except ClaspError as exc:
        _err(str(exc))
        return 2
    try:
        from clasp_engine import Segmenter

        return config, Segmenter(config)
    except ClaspError as exc:
        _err(f"cannot start the engine: {exc}")
        return 1
    except ImportError as exc:
        _err(f"the engine cannot be imported ({exc}); score existing label maps with --predictions PRED_DIR")
        return 1


def write_json_report(report: dict[str, Any], dest: str, log: Any) -> None:
    """The report as JSON on stdout (`dest` "-") or in the file `dest` (its folder created), said on `log`."""
    text = json.dumps(report, indent=2)
    if dest == "-":
        print(text)
        return
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"report   {out}", file=log)


def _print_table(rep: dict[str, Any], out=None) -> None:
    if rep["kind"] == "class":
        head = f"{rep['dataset']} ({rep['n_classes']} classes)"
    else:
        head = f"{rep['dataset']} (class-agnostic, all annotators)"
    if rep["source"] == "engine":
        c = rep["config"]
        src = f"engine {c['backbone']} / {c['variant']}, max side {c['max_side']}" + (
            f", K = {c['k']}" if c.get("k") else "")
    else:
        src = f"predictions {rep['predictions_dir']}"
    lines = [
        f"dataset  {head}",
        f"protocol {rep['protocol']}: {rep['protocol_description']}",
        f"source   {src}",
        f"images   {rep['n_images']} scored, {rep['n_skipped']} skipped",
    ]
    if rep["kind"] == "class":
        lines += [f"mIoU     {_pct(rep['miou'])}", f"accuracy {_pct(rep['pixel_accuracy'])}"]
    else:
        vi = "n/a" if rep["vi"] is None else f"{rep['vi']:.3f} bits"
        pri = "n/a" if rep["pri"] is None else f"{rep['pri']:.3f}"
        lines += [f"covering {_pct(rep['covering'])}", f"PRI      {pri}", f"VI       {vi}"]
    if rep["mean_k"] is not None:
        gt_name = "classes" if rep["kind"] == "class" else "regions"
        lines.append(f"mean K   {rep['mean_k']:.2f}  (ground-truth {gt_name} per image: {rep['mean_gt_classes']:.2f})")
    t = f"{rep['wall_seconds']:.1f} s in all"
    if rep["seconds_per_image"] is not None:
        t = f"{rep['seconds_per_image']:.3f} s/image (engine), " + t
    lines.append(f"time     {t}")
    print("\n".join(lines), file=out or sys.stdout)


def _figures(rep: dict[str, Any], extremes: _Extremes, out_dir: Path) -> list[Path]:
    """Build the report figures (engine: objects only) and write them as PNG files here."""
    from clasp_engine.evaluation import figures as rf

    title = f"{rep['dataset']} · {rep['protocol']} · " + (
        f"{rep['config']['backbone']}/{rep['config']['variant']}" if rep["source"] == "engine" else "predictions")
    metric, key, agg = (("mIoU", "miou", rep.get("miou")) if rep["kind"] == "class"
                        else ("covering", "covering", rep.get("covering")))
    gt_name = "ground-truth classes" if rep["kind"] == "class" else "ground-truth regions (mean over annotators)"
    imgs = rep["images"]
    figures = {
        "k_histogram.png": rf.k_histogram([r["k"] for r in imgs], [r["n_gt_classes"] for r in imgs],
                                          gt_name=gt_name, title=title),
        "per_image_sorted.png": rf.sorted_scores([r["metrics"][key] for r in imgs], metric=metric, aggregate=agg,
                                                 title=f"{title}: per-image {metric}, sorted"),
    }
    best, worst = extremes.rows()
    if best or worst:
        figures["best_worst.png"] = rf.best_worst_grid(best, worst, metric=metric, title=title)
    out = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name)  # at the figure's own dpi
        out.append(out_dir / name)
    return out
