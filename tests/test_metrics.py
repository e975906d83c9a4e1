"""Metric tests with answers worked out by hand (see the comments next to each number)."""

from __future__ import annotations

import numpy as np
import pytest

from clasp_engine.evaluation.metrics import (
    aggregate_class,
    aggregate_region,
    class_scores,
    rand_index,
    region_match,
    region_scores,
    variation_of_information,
)
from clasp_engine.evaluation.protocols import PROTOCOLS, centre_square, resize_nearest

X = 255  # ignore

# 3 classes present (0, 1, 2) of a 4-class dataset, two ignored pixels.
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, X],
        [2, 2, 2, X],
    ]
)


# --------------------------------------------------------------------------- class datasets


def test_ground_truth_against_itself_is_perfect():
    pred = np.where(GT == X, 0, GT)  # ignored pixels get some label; they are not scored
    s = class_scores(GT, pred, n_classes=4)
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0
    t = aggregate_class([s], 4)
    # class 3 is absent and never predicted: TP+FP+FN = 0, left out of the mean
    assert np.isnan(t.iou[3])
    assert t.miou == 1.0 and t.pixel_accuracy == 1.0
    assert s.k == 3 and s.n_gt_classes == 3 and s.n_labelled == 10


def test_permuted_segment_ids_are_still_perfect():
    perm = {0: 7, 1: 3, 2: 5}  # arbitrary, non-contiguous segment ids
    pred = np.vectorize(lambda v: perm.get(int(v), 7))(GT)
    s = class_scores(GT, pred, n_classes=4)
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0
    assert s.segment_to_class == {7: 0, 3: 1, 5: 2}


def test_one_class_split_in_two_with_more_segments_than_classes():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 2], [0, 0, 1, 2]])
    # 2 classes, K = 3: table rows class0 [4 0 0], class1 [0 2 2]; one of the halves
    # of class 1 is left unmatched and counts only as misses.
    # class0: TP 4, FP 0, FN 0 -> 1.0 ; class1: TP 2, FP 0, FN 2 -> 0.5
    s = class_scores(gt, pred, n_classes=2)
    assert s.tp.tolist() == [4, 2] and s.fp.tolist() == [0, 0] and s.fn.tolist() == [0, 2]
    t = aggregate_class([s], 2)
    assert t.iou.tolist() == [1.0, 0.5]
    assert t.miou == pytest.approx(0.75)
    assert t.pixel_accuracy == pytest.approx(6 / 8)


def test_split_segment_matched_to_absent_class_counts_as_false_positives():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 2], [0, 0, 1, 2]])
    # 3 classes, K = 3: the spare half of class 1 is matched to class 2 (absent),
    # so class 2 gets FP 2: IoU [1, 0.5, 0] -> mIoU 0.5; accuracy 6/8.
    s = class_scores(gt, pred, n_classes=3)
    assert s.tp.tolist() == [4, 2, 0] and s.fp.tolist() == [0, 0, 2] and s.fn.tolist() == [0, 2, 0]
    t = aggregate_class([s], 3)
    assert t.iou.tolist() == [1.0, 0.5, 0.0]
    assert t.miou == pytest.approx(0.5)
    assert t.pixel_accuracy == pytest.approx(0.75)
    assert s.miou == pytest.approx(0.75)  # per-image mean over the classes present (0 and 1)


CONST_GT = np.array(
    [
        [0, 0, 0],
        [0, 1, X],
        [2, 2, 1],
    ]
)


def test_constant_prediction():
    # 8 labelled pixels: class0 4, class1 2, class2 2. The single segment goes to class 0:
    # class0 TP 4, FP 8-4 = 4, FN 0 -> 4/8; classes 1 and 2 get an empty column: TP 0, FN 2 -> 0.
    s = class_scores(CONST_GT, np.zeros((3, 3), dtype=int), n_classes=3)
    assert s.tp.tolist() == [4, 0, 0] and s.fp.tolist() == [4, 0, 0] and s.fn.tolist() == [0, 2, 2]
    t = aggregate_class([s], 3)
    assert t.iou.tolist() == [0.5, 0.0, 0.0]
    assert t.miou == pytest.approx(1 / 6)
    assert t.pixel_accuracy == pytest.approx(0.5)
    assert s.k == 1


def test_dataset_sums_tp_fp_fn_before_dividing():
    a = class_scores(np.array([[0, 0, 1, 1], [0, 0, 1, 1]]), np.array([[0, 0, 1, 2], [0, 0, 1, 2]]), 3)
    b = class_scores(CONST_GT, np.zeros((3, 3), dtype=int), 3)
    t = aggregate_class([a, b], 3)
    # TP [4,2,0]+[4,0,0] = [8,2,0]; FP [0,0,2]+[4,0,0] = [4,0,2]; FN [0,2,0]+[0,2,2] = [0,4,2]
    assert t.tp.tolist() == [8, 2, 0] and t.fp.tolist() == [4, 0, 2] and t.fn.tolist() == [0, 4, 2]
    # IoU 8/12, 2/6, 0/4 -> mean 1/3 ; accuracy 10/16
    assert t.iou == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert t.miou == pytest.approx(1 / 3)
    assert t.pixel_accuracy == pytest.approx(10 / 16)
    assert t.n_images == 2 and t.n_labelled == 16


def test_all_ignored_image_contributes_nothing():
    s = class_scores(np.full((2, 2), X), np.zeros((2, 2), dtype=int), 3)
    assert s.n_labelled == 0 and s.tp.sum() == s.fp.sum() == s.fn.sum() == 0
    assert np.isnan(s.miou)


def test_class_id_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="outside 0..2"):
        class_scores(np.array([[0, 5]]), np.array([[0, 0]]), 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        class_scores(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


# --------------------------------------------------------------------------- region measures


def test_region_measures_crossed_halves():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [0, 1]])
    # n = [[1,1],[1,1]]: RI = 1 - (8/2 + 8/2 - 4)/(4*3/2) = 1/3 (2 of 6 pairs agree)
    # VI = H(A) + H(B) - 2 I = 1 + 1 - 0 = 2 bits
    # covering: each GT region (2 px) best IoU 1/3 -> (2/3 + 2/3)/4 = 1/3
    s = region_scores(pred, [gt])
    assert s.pri == pytest.approx(1 / 3)
    assert s.vi == pytest.approx(2.0)
    assert s.covering == pytest.approx(1 / 3)
    assert s.k == 2 and s.n_gt_regions == [2]


def test_region_measures_two_annotators():
    pred = np.array([[0, 0, 1], [0, 1, 1]])
    ann_a = np.array([[0, 0, 0], [0, 1, 1]])
    ann_b = np.zeros((2, 3), dtype=int)
    # annotator A: n = [[3,1],[0,2]], a = [4,2], b = [3,3]
    #   RI = 1 - (20/2 + 18/2 - 14)/15 = 2/3
    #   VI = H(A|B) + H(B|A) = 0.5*H(1/3) + (4/6)*H(1/4) = 1 bit exactly
    #   covering: R0 (4 px) best IoU 3/4, R1 (2 px) best IoU 2/3 -> 3 + 4/3
    # annotator B: one region, n = [[3,3]]
    #   RI = 1 - (36/2 + 18/2 - 18)/15 = 0.4 ; VI = 0 + 1 - 0 = 1 ; covering 6 * 1/2 = 3
    s = region_scores(pred, [ann_a, ann_b])
    assert s.ri == pytest.approx([2 / 3, 0.4])
    assert s.vi_per_annotator == pytest.approx([1.0, 1.0])
    assert s.pri == pytest.approx(8 / 15)
    assert s.vi == pytest.approx(1.0)
    assert s.covering == pytest.approx((3 + 4 / 3 + 3) / 12)  # 11/18, pooled over both annotators
    assert s.n_gt_classes == pytest.approx(1.5)

    only_a = region_scores(pred, [ann_a])
    assert only_a.covering == pytest.approx(13 / 18)


def test_region_aggregation_means_images_and_pools_covering():
    s1 = region_scores(np.array([[0, 1], [0, 1]]), [np.array([[0, 0], [1, 1]])])  # RI 1/3, VI 2, cov 4/3 of 4
    s2 = region_scores(np.array([[0, 0, 1], [0, 1, 1]]), [np.array([[0, 0, 0], [0, 1, 1]])])  # 2/3, 1, 13/3 of 6
    t = aggregate_region([s1, s2])
    assert t.pri == pytest.approx(0.5)
    assert t.vi == pytest.approx(1.5)
    assert t.covering == pytest.approx((4 / 3 + 13 / 3) / 10)
    assert t.n_images == 2


def test_identical_segmentation_is_perfect_region_score():
    gt = np.array([[0, 0, 3], [1, 1, 3]])
    s = region_scores(gt + 10, [gt])
    assert s.pri == 1.0 and s.vi == pytest.approx(0.0, abs=1e-12) and s.covering == 1.0


def test_rand_index_and_vi_from_tables():
    assert rand_index(np.array([[5]])) == 1.0
    assert variation_of_information(np.array([[5]])) == 0.0
    # two independent fair splits of 4 pixels
    assert rand_index(np.array([[1, 1], [1, 1]])) == pytest.approx(1 / 3)
    assert variation_of_information(np.array([[1, 1], [1, 1]])) == pytest.approx(2.0)


# --------------------------------------------------------------------------- presets


def test_centre_square_and_nearest_resize():
    assert centre_square(4, 6) == (0, 1, 4)
    assert centre_square(7, 3) == (2, 0, 3)
    lab = np.array([[0, 1], [2, 3]])
    assert resize_nearest(lab, (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert resize_nearest(np.arange(16).reshape(4, 4), (2, 2)).tolist() == [[5, 7], [13, 15]]


def test_protocol_shapes():
    h, w = 300, 400
    image = np.zeros((h, w, 3), np.uint8)
    labels = np.zeros((h, w), np.uint8)
    ds, dc, nat = PROTOCOLS["diffseg"], PROTOCOLS["diffcut"], PROTOCOLS["native"]
    assert ds.engine_image(image).shape == (512, 512, 3)
    assert ds.labels(labels).shape == (512, 512)
    assert dc.engine_image(image).shape == (300, 300, 3)
    assert dc.labels(labels).shape == (128, 128)
    assert nat.engine_image(image).shape == (h, w, 3)
    assert nat.labels(labels).shape == (h, w)
    # predictions may come at the original size, the engine input size or the scored size
    assert ds.prediction(np.zeros((h, w), int), (h, w)).shape == (512, 512)
    assert dc.prediction(np.zeros((300, 300), int), (h, w)).shape == (128, 128)
    assert dc.prediction(np.zeros((h, w), int), (h, w)).shape == (128, 128)
    with pytest.raises(ValueError, match="fits neither"):
        nat.prediction(np.zeros((10, 10), int), (h, w))


def test_crop_keeps_labels_aligned_with_prediction_at_original_size():
    gt = np.array([[9, 0, 1, 9], [9, 2, 3, 9]])  # 2x4 -> centre square is columns 1..2
    pred = gt.copy()
    p = PROTOCOLS["diffcut"]
    g2, p2 = p.labels(gt), p.prediction(pred, gt.shape)
    assert np.array_equal(g2, p2) and set(np.unique(g2)) == {0, 1, 2, 3}


def test_region_match_is_one_to_one():
    gt = np.array([[0, 0, 0, 0], [1, 1, 1, 1]])
    pred = np.array([[5, 5, 6, 6], [7, 7, 7, 7]])
    # segments 5 and 6 both lie in region 0; only one of them gets its colour
    m = region_match(pred, gt)
    assert m[7] == 1 and len(m) == 2 and sorted(m.values()) == [0, 1]
