"""`clasp eval` end to end: tiny hand-made datasets scored from --predictions, and the engine on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clasp_cli.main import main

X = 255


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def class_dataset(tmp_path: Path) -> tuple[Path, Path]:
    root, preds = tmp_path / "toy", tmp_path / "preds"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("0\tsky\n1\troad\n2\ttree\n")
    # a: one class split in two segments; the spare one lands on absent class 2
    _png(root / "images" / "a.png", _rgb(2, 4))
    _png(root / "labels" / "a.png", [[0, 0, 1, 1], [0, 0, 1, 1]])
    _png(preds / "a.png", [[0, 0, 1, 2], [0, 0, 1, 2]])
    # b: constant prediction, one ignored pixel
    _png(root / "images" / "b.png", _rgb(3, 3, 1))
    _png(root / "labels" / "b.png", [[0, 0, 0], [0, 1, X], [2, 2, 1]])
    _png(preds / "b.png", np.zeros((3, 3)))
    # c: unreadable image; d: label size differs from the image; e: no prediction
    (root / "images" / "c.jpg").write_bytes(b"this is not a jpeg")
    _png(root / "labels" / "c.png", np.zeros((2, 2)))
    _png(root / "images" / "d.png", _rgb(5, 5))
    _png(root / "labels" / "d.png", np.zeros((4, 4)))
    _png(preds / "d.png", np.zeros((5, 5)))
    _png(root / "images" / "e.png", _rgb(2, 2))
    _png(root / "labels" / "e.png", np.zeros((2, 2)))
    return root, preds


def test_eval_predictions_class_dataset_hand_computed(class_dataset, tmp_path, capsys):
    root, preds = class_dataset
    out = tmp_path / "r.json"
    rc = main(["eval", str(root), "--predictions", str(preds), "--protocol", "native", "--json", str(out),
               "--no-progress"])
    assert rc == 0
    rep = json.loads(out.read_text())
    # summed over a and b: TP [8,2,0], FP [4,0,2], FN [0,4,2] -> IoU 2/3, 1/3, 0 ; accuracy 10/16
    assert rep["miou"] == pytest.approx(1 / 3)
    assert rep["pixel_accuracy"] == pytest.approx(10 / 16)
    assert rep["iou_per_class"] == pytest.approx({"sky": 2 / 3, "road": 1 / 3, "tree": 0.0})
    assert rep["n_images"] == 2 and rep["protocol"] == "native" and rep["kind"] == "class"
    assert rep["n_skipped"] == 3
    reasons = {s["id"]: s["reason"] for s in rep["skipped"]}
    assert "unreadable image" in reasons["c"]
    assert "4×4" in reasons["d"] and "5×5" in reasons["d"]
    assert "no prediction" in reasons["e"]
    by_id = {r["id"]: r for r in rep["images"]}
    assert set(by_id) == {"a", "b"}
    assert by_id["a"]["k"] == 3 and by_id["b"]["k"] == 1
    assert by_id["a"]["metrics"]["miou"] == pytest.approx(0.75)  # mean over the classes present in a
    assert by_id["b"]["metrics"]["pixel_accuracy"] == pytest.approx(0.5)
    assert set(by_id["a"]) == {"id", "k", "n_gt_classes", "metrics", "seconds"}
    assert rep["mean_k"] == pytest.approx(2.0)

    printed = capsys.readouterr()
    assert "mIoU     33.3 %" in printed.out and "accuracy 62.5 %" in printed.out
    assert "3 skipped" in printed.out
    assert "skipped c: unreadable image" in printed.err


def test_eval_perfect_predictions_under_each_protocol_and_report(tmp_path):
    root, preds = tmp_path / "toy", tmp_path / "preds"
    root.mkdir()
    (root / "classes.txt").write_text("0\ta\n1\tb\n2\tc\n3\td\n")
    rng = np.random.default_rng(3)
    for i in range(4):
        h, w = 24 + 4 * i, 40 - 2 * i
        lab = np.zeros((h, w), np.uint8)
        lab[: h // 2] = 1
        lab[:, : w // 3] = 2 if i % 2 else 3
        lab[0, 0] = X
        _png(root / "images" / f"im{i}.png", _rgb(h, w, i))
        _png(root / "labels" / f"im{i}.png", lab)
        perm = rng.permutation(10)
        _png(preds / f"im{i}.png", perm[np.where(lab == X, 0, lab)])  # ids permuted
    for protocol in ("diffseg", "diffcut", "native"):
        rdir = tmp_path / f"report-{protocol}"
        rc = main(["eval", str(root), "--predictions", str(preds), "--protocol", protocol,
                   "--report", str(rdir), "--no-progress"])
        assert rc == 0
        rep = json.loads((rdir / "eval.json").read_text())
        assert rep["protocol"] == protocol
        assert rep["miou"] == pytest.approx(1.0) and rep["pixel_accuracy"] == pytest.approx(1.0)
        assert rep["n_images"] == 4 and rep["n_skipped"] == 0
        for name in ("k_histogram.png", "per_image_sorted.png", "best_worst.png"):
            assert (rdir / name).stat().st_size > 1000, name


def test_eval_predictions_region_dataset_hand_computed(tmp_path, capsys):
    root, preds = tmp_path / "bsds", tmp_path / "preds"
    _png(root / "images" / "p.png", _rgb(2, 3))
    _png(root / "labels" / "p.png", [[0, 0, 0], [0, 1, 1]])
    _png(root / "labels_all" / "p_0.png", [[0, 0, 0], [0, 1, 1]])
    _png(root / "labels_all" / "p_1.png", np.zeros((2, 3)))
    _png(preds / "p.png", [[0, 0, 1], [0, 1, 1]])
    _png(root / "images" / "q.png", _rgb(2, 2))
    _png(root / "labels" / "q.png", [[0, 0], [1, 1]])  # no labels_all entry: falls back to labels/
    _png(preds / "q.png", [[0, 1], [0, 1]])
    out = tmp_path / "r.json"
    rc = main(["eval", str(root), "--predictions", str(preds), "--json", str(out), "--no-progress"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["kind"] == "region" and rep["protocol"] == "native"  # auto: BSDS setting
    by_id = {r["id"]: r["metrics"] for r in rep["images"]}
    # p: RI 2/3 and 0.4 -> 8/15; VI 1 and 1 -> 1; covering (3 + 4/3 + 3)/12
    assert by_id["p"] == pytest.approx({"covering": 11 / 18, "pri": 8 / 15, "vi": 1.0})
    # q: RI 1/3, VI 2 bits, covering (2/3 + 2/3)/4
    assert by_id["q"] == pytest.approx({"covering": 1 / 3, "pri": 1 / 3, "vi": 2.0})
    assert rep["pri"] == pytest.approx((8 / 15 + 1 / 3) / 2)
    assert rep["vi"] == pytest.approx(1.5)
    assert rep["covering"] == pytest.approx((22 / 3 + 4 / 3) / 16)  # pooled over every annotator's regions
    assert "covering" in capsys.readouterr().out


def test_eval_json_to_stdout_keeps_the_table_on_stderr(class_dataset, capsys):
    root, preds = class_dataset
    assert main(["eval", str(root), "--predictions", str(preds), "--protocol", "native", "--json", "-",
                 "--limit", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    rep = json.loads(captured.out)
    assert rep["n_images"] == 2 and rep["miou"] == pytest.approx(1 / 3)
    assert "mIoU" in captured.err


def test_eval_rejects_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--predictions", str(tmp_path)]) == 2
    assert "no images/ folder" in capsys.readouterr().err


@pytest.mark.shared_data
@pytest.mark.slow
def test_eval_runs_the_engine_on_real_data(shared_data, tmp_path):
    out = tmp_path / "coco.json"
    rc = main(["eval", str(shared_data / "cocostuff"), "--backbone", "classic", "--variant", "patch",
               "--limit", "2", "--json", str(out), "--save-predictions", str(tmp_path / "pred"), "--no-progress"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["n_images"] == 2 and rep["protocol"] == "diffseg" and rep["source"] == "engine"
    assert 0.0 <= rep["miou"] <= 1.0 and 0.0 <= rep["pixel_accuracy"] <= 1.0
    assert rep["config"]["backbone"] == "classic" and rep["config"]["variant"] == "patch"
    assert all(r["seconds"] > 0 and r["k"] >= 1 for r in rep["images"])
    # the saved label maps score the same when read back
    out2 = tmp_path / "again.json"
    assert main(["eval", str(shared_data / "cocostuff"), "--predictions", str(tmp_path / "pred"), "--limit", "2",
                 "--json", str(out2), "--no-progress"]) == 0
    again = json.loads(out2.read_text())
    assert again["miou"] == pytest.approx(rep["miou"]) and again["n_images"] == 2

    out3 = tmp_path / "bsds.json"
    assert main(["eval", str(shared_data / "bsds500"), "--backbone", "classic", "--variant", "patch",
                 "--limit", "1", "--json", str(out3), "--no-progress"]) == 0
    b = json.loads(out3.read_text())
    assert b["kind"] == "region" and 0 < b["covering"] <= 1 and 0 < b["pri"] <= 1 and b["vi"] >= 0
