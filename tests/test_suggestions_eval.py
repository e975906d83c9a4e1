"""`clasp eval --suggestions`: simulated reviews, one record per proposal, printed figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clasp_cli.main import main
from integrations.review.simulate import SuggestionRecord, proposal_truth, reviewed_images, summary

CLASSES = ["sky", "grass", "road", "sand"]
COLOURS = [(60, 120, 230), (40, 180, 50), (120, 120, 120), (230, 200, 120)]


def _dataset(root: Path, n: int = 8) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(CLASSES)))
    rng = np.random.default_rng(0)
    for i in range(n):
        a, b = (i % 4, (i + 1 + i // 4) % 4)
        img = np.zeros((64, 64, 3), np.uint8)
        lab = np.zeros((64, 64), np.uint8)
        img[:32], lab[:32] = COLOURS[a], a
        img[32:], lab[32:] = COLOURS[b], b
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        if i == 0:
            lab[32:] = 255  # the lower half is ignore: its proposal has no true class
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(lab).save(root / "labels" / f"im{i}.png")
    return root


def test_proposal_truth_is_the_majority_class_or_none_when_mostly_ignore():
    gt = np.array([[0, 0, 1, 255], [0, 1, 255, 255]])
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    assert proposal_truth(pred, gt, ["a", "b"]) == {0: "a", 1: None}
    with pytest.raises(ValueError, match="differ"):
        proposal_truth(pred[:1], gt, ["a", "b"])


def test_reviewed_images_are_a_seeded_fraction():
    ids = [f"i{k}" for k in range(10)]
    assert reviewed_images(ids, 0.5, 3) == reviewed_images(list(reversed(ids)), 0.5, 3)
    assert len(reviewed_images(ids, 0.3, 0)) == 3
    assert reviewed_images(ids, 0.5, 0) != reviewed_images(ids, 0.5, 1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        reviewed_images(ids, 1.5)


def test_summary_counts_unreviewed_proposals_and_the_majority_baseline():
    recs = [SuggestionRecord("a", 0, "sky", "sky", 1.0, True), SuggestionRecord("a", 1, "sky", "sky", 1.0, True),
            SuggestionRecord("b", 0, "road", "road", 0.9, False), SuggestionRecord("b", 1, "sky", "road", 0.4, False),
            SuggestionRecord("b", 2, None, "sky", 0.8, False), SuggestionRecord("c", 0, "road", None, 0.0, False)]
    s = summary(recs, thresholds=(0.5,))
    assert s["n_scored"] == 3 and s["top1_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["majority_class"] == "sky" and s["majority_baseline"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["thresholds"] == [{"threshold": 0.5, "coverage": pytest.approx(1 / 3, abs=1e-4), "accuracy": 1.0,
                                "n": 1}]


def test_eval_suggestions_writes_one_record_per_proposal(tmp_path, capsys):
    root = _dataset(tmp_path / "toy")
    out = tmp_path / "s.json"
    args = ["eval", str(root), "--suggestions", "--reviewed-fraction", "0.5", "--backbone", "classic",
            "--variant", "patch", "--max-side", "64", "--protocol", "native", "--json", str(out)]
    assert main(args + ["--report", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text())
    recs = rep["suggestions"]
    assert recs and all(set(r) == {"image", "region", "true", "suggested", "confidence", "reviewed"} for r in recs)
    reviewed = {r["image"] for r in recs if r["reviewed"]}
    assert reviewed == reviewed_images([f"im{i}" for i in range(8)], 0.5, 0) and len(reviewed) == 4
    for r in recs:
        i = int(r["image"][2:])
        assert r["true"] in {CLASSES[i % 4], CLASSES[(i + 1 + i // 4) % 4], None}
        assert 0.0 <= r["confidence"] <= 1.0
        if r["reviewed"]:
            assert r["suggested"] == r["true"]
        else:
            assert r["suggested"] is None or r["suggested"] in CLASSES
    assert any(r["true"] is None for r in recs if r["image"] == "im0")  # the ignore half
    scored = [r for r in recs if not r["reviewed"] and r["true"] is not None]
    acc = sum(r["suggested"] == r["true"] for r in scored) / len(scored)
    assert rep["top1_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert f"top-1     {100 * acc:.1f} %" in printed and "majority" in printed
    assert (tmp_path / "rep" / "suggestions_accuracy.png").stat().st_size > 1000
    # the same seed gives the same records
    out2 = tmp_path / "s2.json"
    assert main(args[:-1] + [str(out2)]) == 0
    assert json.loads(out2.read_text())["suggestions"] == recs


def test_eval_suggestions_rejects_a_bad_fraction(tmp_path, capsys):
    root = _dataset(tmp_path / "toy", 2)
    assert main(["eval", str(root), "--suggestions", "--reviewed-fraction", "1.0"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
