"""`clasp eval DATASET --suggestions --reviewed-fraction F`: how good are suggestions from reviews?

Runs the engine on every image of a class dataset, gives each proposal its
majority ground-truth class, simulates reviewers on a seeded fraction F of the
images (`integrations.review.simulate`) and suggests labels for the proposals
of the other images from those exemplars alone. Prints top-1 accuracy over the
unreviewed proposals, the majority-class baseline, and accuracy and coverage at
a few thresholds; `--json OUT` writes one record per proposal (`suggestions`),
`--report DIR` adds a picture of accuracy against reviewed fraction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CURVE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `clasp eval` gains (called from clasp_cli.evaluate)."""
    g = parser.add_argument_group("suggestions from simulated reviews (class datasets)")
    g.add_argument("--suggestions", action="store_true",
                   help="simulate reviews on a fraction of the images and score label suggestions on the rest")
    g.add_argument("--reviewed-fraction", type=float, default=0.5, metavar="F",
                   help="fraction of the images whose proposals are reviewed (default 0.5)")
    g.add_argument("--seed", type=int, default=0, help="seed of the reviewed-image choice (default 0)")


def _err(msg: str) -> None:
    print(f"clasp eval: {msg}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from clasp_engine.errors import ClaspError, InvalidImageError
    from clasp_engine.evaluation.protocols import PROTOCOLS
    from integrations.datasets import DatasetError, PairError, load_labels, open_dataset, read_image
    from integrations.review.simulate import Proposal, proposal_truth, simulate, summary

    started = time.perf_counter()
    if not 0.0 < args.reviewed_fraction < 1.0:
        _err(f"--reviewed-fraction {args.reviewed_fraction}: must be strictly between 0 and 1")
        return 2
    if args.predictions:
        _err("--suggestions needs the engine's region embeddings: it cannot score --predictions")
        return 2
    try:
        ds = open_dataset(args.dataset)
    except DatasetError as exc:
        _err(str(exc))
        return 2
    if ds.kind != "class":
        _err(f"{args.dataset}: --suggestions needs a class dataset (classes.txt); {ds.name} is class-agnostic")
        return 2
    protocol = PROTOCOLS["diffseg" if args.protocol == "auto" else args.protocol]
    from clasp_cli.evaluate import build_segmenter

    built = build_segmenter(args)  # flags over CLASP_* variables, as `clasp eval`
    if isinstance(built, int):
        return built
    config, segmenter = built
    pairs = ds.pairs[: args.limit] if args.limit else ds.pairs
    proposals: list[Proposal] = []
    skipped = []
    engine_info: dict[str, Any] = {}
    for pair in pairs:
        try:
            image = read_image(pair.image_path)
            h, w = image.shape[:2]
            gt = protocol.labels(load_labels(pair, (h, w))[0])
            result = segmenter(protocol.engine_image(image))
            pred = protocol.prediction(np.asarray(result.labels), (h, w))
        except (InvalidImageError, PairError, ClaspError, ValueError) as exc:
            skipped.append({"id": pair.image_id, "reason": str(exc)})
            _err(f"skipped {pair.image_id}: {exc}")
            continue
        if not engine_info:
            d = result.diagnostics
            engine_info = {"backbone": d.backbone, "weights": d.weights, "variant": d.variant,
                           "features": d.features, "engine_version": d.engine_version}
        emb = result.region_embeddings
        for region, true in sorted(proposal_truth(pred, gt, ds.class_names).items()):
            vec = emb[region] if emb is not None and region < len(emb) and np.any(emb[region]) else None
            proposals.append(Proposal(pair.image_id, region, true, vec))
    if not proposals:
        _err("no proposal to score")
        return 1
    records = simulate(proposals, args.reviewed_fraction, seed=args.seed)
    figures = summary(records)
    report: dict[str, Any] = {
        "dataset": ds.name, "dataset_dir": str(ds.root.resolve()), "protocol": protocol.name,
        "engine": engine_info, "config": config.to_dict(), "reviewed_fraction": args.reviewed_fraction,
        "seed": args.seed, "n_images": len({p.image for p in proposals}), "skipped": skipped,
        **figures, "wall_seconds": round(time.perf_counter() - started, 3),
        "suggestions": [r.to_dict() for r in records],
    }
    out = sys.stderr if args.json == "-" else sys.stdout
    _print(report, out)
    if args.json:
        from clasp_cli.evaluate import write_json_report

        write_json_report(report, args.json, out)
    if args.report:
        curve = [(f, summary(simulate(proposals, f, seed=args.seed))) for f in CURVE_FRACTIONS]
        report["curve"] = [{"reviewed_fraction": f, "top1_accuracy": s["top1_accuracy"],
                            "majority_baseline": s["majority_baseline"]} for f, s in curve]
        out_dir = Path(args.report)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "suggestions.json").write_text(json.dumps(report, indent=2) + "\n")
        png = _curve_figure(report, out_dir / "suggestions_accuracy.png")
        print(f"figures  {out_dir}: suggestions.json, {png.name}", file=out)
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _print(rep: dict[str, Any], out) -> None:
    e = rep["engine"]
    lines = [
        f"dataset   {rep['dataset']} ({rep['n_images']} images, protocol {rep['protocol']})",
        f"engine    {e.get('backbone')} / {e.get('variant')} ({e.get('weights')})",
        f"reviewed  {rep['reviewed_fraction']:.2f} of the images (seed {rep['seed']}): "
        f"{rep['n_exemplars']} exemplars; {rep['n_scored']} unreviewed proposals scored",
        f"top-1     {_pct(rep['top1_accuracy'])}",
        f"majority  {_pct(rep['majority_baseline'])} (always '{rep['majority_class']}')",
        "threshold coverage accuracy",
    ]
    for t in rep["thresholds"]:
        lines.append(f"  {t['threshold']:.2f}    {_pct(t['coverage']):>8} {_pct(t['accuracy']):>8}")
    print("\n".join(lines), file=out)


def _curve_figure(rep: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [c["reviewed_fraction"] for c in rep["curve"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(xs, [c["top1_accuracy"] for c in rep["curve"]], "o-", label="kNN suggestion, top-1")
    ax.plot(xs, [c["majority_baseline"] for c in rep["curve"]], "s--", color="grey", label="majority class")
    ax.set_xlabel("reviewed fraction of the images")
    ax.set_ylabel("accuracy on unreviewed proposals")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"{rep['dataset']} · {rep['engine'].get('backbone')}/{rep['engine'].get('variant')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
