"""Localization/detection metrics against scikit-learn (random cases) and hand-computed tiny cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, matthews_corrcoef, roc_auc_score

from exif_jax.eval import metrics as M


def sk_ap(mask, score):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return average_precision_score(mask.ravel(), score.ravel())


def sk_at(mask, pred):
    """sklearn's F1, IoU, class-balanced IoU and MCC of a binary prediction (zero_division=1 as ours)."""
    y, p = mask.ravel().astype(int), pred.ravel().astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"f1": f1_score(y, p, zero_division=1.0), "iou": jaccard_score(y, p, zero_division=1.0),
                "ciou": jaccard_score(y, p, labels=[0, 1], average="macro", zero_division=1.0),
                "mcc": matthews_corrcoef(y, p)}


def brute_best(mask, score):
    """Each metric's best over every threshold of the map and of its inverse, plus 'predict nothing'."""
    best = {}
    for s in (score, -score):
        preds = [s >= t for t in np.unique(s)] + [np.zeros_like(mask, dtype=bool)]
        for p in preds:
            for k, v in sk_at(mask, p).items():
                best[k] = max(best.get(k, -1.0), v)
    return best


def average_precision(score_map: np.ndarray, mask: np.ndarray) -> float:
    """Pixel AP of the map alone (not its inverse), from the pieces localization_scores is made of."""
    s, m = M._validate(score_map, mask)
    order = np.argsort(-s, kind="stable")
    return M._average_precision(*M._curve(s[order], m[order]), int(m.sum()))


def best_threshold_scores(score_map: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """F1, IoU, cIoU, MCC of `map >= t` at each metric's best t (the map alone)."""
    s, m = M._validate(score_map, mask)
    order = np.argsort(-s, kind="stable")
    pos = int(m.sum())
    return {k: float(v.max()) for k, v in M._scores(*M._curve(s[order], m[order]), pos, m.size - pos).items()}


def threshold_scores(pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """F1, IoU, cIoU, MCC of a binary prediction, from the same _scores."""
    p, m = M._validate(np.asarray(pred, dtype=bool), mask)
    p, pos = p.astype(bool), int(m.sum())
    out = M._scores(np.array([np.sum(p & m)]), np.array([np.sum(p & ~m)]), pos, m.size - pos)
    return {k: float(v[0]) for k, v in out.items()}


@pytest.mark.parametrize("seed", range(4))
def test_random_maps_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 13)
    mask = rng.random(shape) < rng.uniform(0.1, 0.6)
    score = np.round(rng.normal(size=shape) + 0.8 * mask, 1)  # rounding makes ties
    got = M.localization_scores(score, mask)
    assert got["ap"] == pytest.approx(max(sk_ap(mask, score), sk_ap(mask, -score)), abs=1e-12)
    for k, v in brute_best(mask, score).items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    sn = (score - score.min()) / (score.max() - score.min())
    fwd, inv = sk_at(mask, sn > 0.5), sk_at(mask, (1 - sn) > 0.5)
    for k in ("f1", "iou", "ciou", "mcc"):
        assert got[f"{k}@0.5"] == pytest.approx(max(fwd[k], inv[k]), abs=1e-12), k
    # the map-only helpers agree with sklearn too
    assert average_precision(score, mask) == pytest.approx(sk_ap(mask, score), abs=1e-12)
    assert threshold_scores(score > 0, mask) == pytest.approx(sk_at(mask, score > 0), abs=1e-12)


def test_full_size_map_matches_sklearn():
    rng = np.random.default_rng(7)
    mask = np.zeros((384, 512), dtype=bool)
    mask[100:220, 150:330] = True
    score = rng.random(mask.shape).astype(np.float32) * 0.7 + 0.3 * mask
    got = M.localization_scores(score, mask)
    assert got["ap"] == pytest.approx(sk_ap(mask, score), abs=1e-9)
    assert best_threshold_scores(score, mask)["f1"] >= got["f1@0.5"]


def test_hand_computed_tiny_case():
    mask = np.array([[1, 0, 1, 0]], dtype=bool)
    score = np.array([[0.8, 0.6, 0.4, 0.2]])
    got = M.localization_scores(score, mask)
    # map: P(0.8)=1 at R=.5, P(0.4)=2/3 at R=1 -> 5/6; inverse: 1/2
    assert got["ap"] == pytest.approx(5 / 6)
    assert got["f1"] == pytest.approx(4 / 5)  # >= 0.4: TP 2, FP 1, FN 0
    assert got["iou"] == pytest.approx(2 / 3)
    assert got["mcc"] == pytest.approx(1 / math.sqrt(3))
    assert got["ciou"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # authentic class: TN 1 / (1 + 1)
    # min-max: [1, 2/3, 1/3, 0] > .5 -> [1, 1, 0, 0]: TP 1, FP 1, FN 1, TN 1
    assert got["f1@0.5"] == pytest.approx(0.5)
    assert got["mcc@0.5"] == pytest.approx(0.0)


def test_inverted_map_scores_the_same():
    rng = np.random.default_rng(3)
    mask = rng.random((20, 20)) < 0.3
    score = rng.random((20, 20)) + mask
    a, b = M.localization_scores(score, mask), M.localization_scores(1.0 - score, mask)
    assert a == pytest.approx(b, abs=1e-12)
    perfect = M.localization_scores(mask.astype(float), mask)
    flipped = M.localization_scores(1.0 - mask, mask)
    for k in M.LOCALIZATION_KEYS:
        assert perfect[k] == pytest.approx(1.0) and flipped[k] == pytest.approx(1.0), k


def test_constant_map_ties():
    mask = np.array([[1, 0, 0, 1, 0]], dtype=bool)
    const = np.full(mask.shape, 0.3)
    got = M.localization_scores(const, mask)
    assert got["ap"] == pytest.approx(sk_ap(mask, const)) == pytest.approx(0.4)  # prevalence
    assert got["f1"] == pytest.approx(2 * 2 / (2 * 2 + 3))  # predict everything
    # min-max of a constant map is all 0: predict nothing, or everything for the inverse
    assert got["f1@0.5"] == pytest.approx(f1_score(mask.ravel(), np.ones(5, int)))
    assert got["mcc@0.5"] == 0.0


def test_all_negative_mask_conventions():
    mask = np.zeros((6, 7), dtype=bool)
    score = np.random.default_rng(0).random(mask.shape)
    got = M.localization_scores(score, mask)
    assert math.isnan(got["ap"])
    assert math.isnan(average_precision(score, mask))
    for k in ("f1", "iou", "ciou", "mcc"):  # the oracle threshold predicts nothing: perfect
        assert got[k] == 1.0, k
    # min-max spreads any non-constant map over [0, 1]: something is always > 0.5 -> false positives
    assert got["f1@0.5"] == 0.0 and got["iou@0.5"] == 0.0 and got["mcc@0.5"] == 0.0
    assert sk_at(mask, score > 0.5)["f1"] == 0.0  # sklearn agrees once a pixel is flagged
    # a map already in [0, 1] that stays below 0.5 is a perfect all-zero prediction
    low = M.localization_scores(score * 0.4, mask, normalize="none")
    assert low["f1@0.5"] == low["iou@0.5"] == low["mcc@0.5"] == low["ciou@0.5"] == 1.0
    assert threshold_scores(np.zeros_like(mask), mask)["mcc"] == 1.0  # sklearn would say 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert matthews_corrcoef(mask.ravel(), mask.ravel()) == 0.0  # (documented difference)


def test_all_positive_mask():
    mask = np.ones((4, 5), dtype=bool)
    score = np.random.default_rng(1).random(mask.shape)
    got = M.localization_scores(score, mask)
    assert got["ap"] == pytest.approx(1.0) == pytest.approx(sk_ap(mask, score))
    assert got["f1"] == 1.0 and got["iou"] == 1.0 and got["mcc"] == 1.0 and got["ciou"] == 1.0
    sn = (score - score.min()) / (score.max() - score.min())
    assert got["f1@0.5"] == pytest.approx(max(sk_at(mask, sn > 0.5)["f1"], sk_at(mask, sn < 0.5)["f1"]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        M.localization_scores(np.zeros((3, 3)), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="non-finite"):
        M.localization_scores(np.array([[np.nan, 1.0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="0 and 1"):
        M.localization_scores(np.zeros((2, 2)), np.full((2, 2), 255))
    with pytest.raises(ValueError, match=r"not \[0, 1\]"):
        M.localization_scores(np.array([[2.0, 0.0]]), np.array([[1, 0]]), normalize="none")
    with pytest.raises(ValueError, match="authentic"):
        M.image_record("x", 0, score_map=np.zeros((2, 2)), mask=np.eye(2))


@pytest.mark.parametrize("seed", range(4))
def test_detection_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + labels, 1)
    got = M.detection_scores(scores, labels)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["n"] == 60 and got["n_spliced"] == int(labels.sum())


def test_detection_one_class_is_nan():
    got = M.detection_scores([0.1, 0.5], [1, 1])
    assert math.isnan(got["auc"]) and got["ap"] == pytest.approx(1.0)
    assert math.isnan(M.detection_scores([0.1, 0.5], [0, 0])["ap"])


def test_summarize_reports_both_rows():
    rng = np.random.default_rng(5)
    records, spliced_aps = [], []
    for i in range(6):
        mask = np.zeros((16, 16), dtype=bool)
        mask[2:2 + i + 3, 4:12] = True
        score_map = rng.random(mask.shape) + 0.5 * mask
        rec = M.image_record(f"s{i}", 1, score=float(score_map.max()), score_map=score_map, mask=mask)
        spliced_aps.append(rec["ap"])
        records.append(rec)
    for i in range(4):  # authentic: no mask given -> all-negative
        records.append(M.image_record(f"a{i}", 0, score=0.1 * i, score_map=rng.random((16, 16))))
    records.append(M.image_record("detection-only", 1, score=2.0))  # spliced, no mask
    table = M.summarize(records)
    so, al = table["localization"]["spliced_only"], table["localization"]["all_images"]
    assert so["n"] == 6 and al["n"] == 10 and table["n_images"] == 11
    assert so["ap"] == pytest.approx(np.mean(spliced_aps))
    assert al["ap"] == pytest.approx(np.sum(spliced_aps) / 10)  # authentic AP counted as 0
    assert al["f1"] == pytest.approx((6 * so["f1"] + 4 * 1.0) / 10)  # oracle threshold: 1 on authentic
    det = table["detection"]
    labels = [r["label"] for r in records]
    scores = [r["score"] for r in records]
    assert det["ap"] == pytest.approx(average_precision_score(labels, scores))
    assert det["auc"] == pytest.approx(roc_auc_score(labels, scores))
    md = M.to_markdown(table, title="toy")
    assert "| spliced only | 6 |" in md and "| all images (authentic included) | 10 |" in md
    assert f"{so['ap']:.3f}" in md and f"{al['ap']:.3f}" in md and f"{det['auc']:.3f}" in md
    assert "counted as 0" in md
