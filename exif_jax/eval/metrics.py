"""Splice localization and detection metrics (numpy only; scikit-learn is a test-time reference).

Localization compares a per-pixel score map with a binary ground-truth mask, one image at a time, then
averages over images. The sign of a zero-shot consensus map is arbitrary (which side is "the rest of the
image" is not known), so every localization metric is the max over the map and its inverse, each metric
choosing independently (the convention of Huh et al. 2018 and of the EXIF-as-Language code).

Per image (`localization_scores`):
- ``ap``: pixel average precision, sklearn's definition (sum over distinct thresholds of
  recall step x precision, ties grouped), max over map and ``-map``. Averaged over images = p-mAP.
- ``f1``, ``iou``, ``ciou``, ``mcc``: at the best threshold of that metric for this image (an oracle
  threshold), searched exactly over every distinct value of the map plus "predict nothing".
  ``iou`` is the spliced-class IoU; ``ciou`` is the class-balanced IoU, the mean of the spliced-class
  and authentic-class IoU at one shared threshold. (The EXIF-as-Language code picks the two classes'
  thresholds separately, which can only score higher; we do not.)
- ``f1@0.5``, ``iou@0.5``, ``ciou@0.5``, ``mcc@0.5``: at the fixed threshold 0.5 on the map normalized
  to [0, 1] (``normalize="minmax"``: per-image (s - min) / (max - min), a constant map becomes all 0;
  ``normalize="none"``: the map must already lie in [0, 1]). A pixel is predicted spliced when its
  normalized score is > 0.5 (strictly, as the paper's code); for the inverse map when 1 - s > 0.5.

Degenerate masks (authentic images have an all-negative mask) — conventions, stated once:
- AP has no positives to rank, so it is undefined (``nan`` here). Authentic images are never in the
  "spliced only" row. In the "all images" row they count as AP = 0, which is what scikit-learn returns and
  what a user who ran the official code with the authentic images included measured: Columbia p-mAP
  0.94 spliced-only becomes ~0.45 over all 363 images. A table that does not say which is misleading,
  hence both rows in `summarize`.
- F1 and IoU with no positive pixel in truth or prediction (0/0): 1 (a perfect all-zero prediction).
  Any false positive on an all-negative mask gives 0.
- MCC when its denominator is 0 (truth or prediction constant): 1 if the prediction equals the truth
  exactly, else 0. (scikit-learn returns 0 even for the exact match.)
- Consequently the oracle-threshold F1/IoU/cIoU/MCC of an authentic image are 1 by construction ("predict
  nothing" is a threshold); only the @0.5 columns say anything about authentic images.
- All-positive masks follow the same formulas: AP = 1 for any map, 0/0 IoU of the authentic class = 1.

Detection (`detection_scores`): image-level AP and ROC-AUC of per-image scores against labels
(spliced = 1). The sign of a detection score is meaningful (higher = more likely spliced): no inversion.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

LOCALIZATION_KEYS = ("ap", "ciou", "iou", "f1", "mcc", "ciou@0.5", "iou@0.5", "f1@0.5", "mcc@0.5")
# Table columns: (record key, header).
_COLUMNS = (("ap", "p-mAP"), ("ciou", "cIoU"), ("iou", "IoU"), ("f1", "F1"), ("mcc", "MCC"),
            ("f1@0.5", "F1@0.5"), ("mcc@0.5", "MCC@0.5"))

CONVENTIONS = (
    "Each localization metric is the max over the score map and its inverse, computed per image, then "
    "averaged over images.",
    "F1/IoU/cIoU/MCC without '@0.5' use each image's best threshold (oracle); '@0.5' thresholds the map "
    "min-max normalized to [0, 1] at > 0.5. cIoU = mean of spliced- and authentic-class IoU at one "
    "threshold.",
    "Authentic images (all-negative masks): AP undefined -> counted as 0 in 'all images' (scikit-learn's "
    "value); F1/IoU/MCC of an all-zero prediction = 1, any false positive = 0; so their oracle-threshold "
    "scores are 1 by construction.",
    "Detection: AP and ROC-AUC of per-image scores (higher = spliced) against labels (spliced = 1).",
)


# ----------------------------------------------------------------------------------------------------
# Confusion counts

def _validate(score_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score_map, dtype=np.float64)
    m = np.asarray(mask)
    if s.shape != m.shape:
        raise ValueError(f"score map shape {s.shape} != mask shape {m.shape}; resize the map to the mask first")
    if s.size == 0:
        raise ValueError("empty score map")
    if not np.isfinite(s).all():
        raise ValueError(f"score map has {int((~np.isfinite(s)).sum())} non-finite values (nan/inf)")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask must be boolean or hold only 0 and 1")
        m = m.astype(bool)
    return s.ravel(), m.ravel()


def _curve(s_desc: np.ndarray, m_desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TP, FP) of `score >= t` for t = every distinct score, descending, with 'predict nothing' first."""
    tp = np.cumsum(m_desc, dtype=np.int64)
    fp = np.cumsum(~m_desc, dtype=np.int64)
    last = np.flatnonzero(np.diff(s_desc) != 0)  # end of each run of tied scores
    last = np.append(last, s_desc.size - 1)
    return np.concatenate(([0], tp[last])), np.concatenate(([0], fp[last]))


def _ratio(num: np.ndarray, den: np.ndarray, if_zero: float) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, if_zero, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _scores(tp: np.ndarray, fp: np.ndarray, pos: int, neg: int) -> dict[str, np.ndarray]:
    """F1, IoU, cIoU and MCC for arrays of confusion counts (conventions in the module docstring)."""
    tp, fp = np.asarray(tp, np.float64), np.asarray(fp, np.float64)
    fn, tn = pos - tp, neg - fp
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
    iou = _ratio(tp, tp + fp + fn, 1.0)
    iou_neg = _ratio(tn, tn + fn + fp, 1.0)
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    exact = (fp == 0) & (fn == 0)
    mcc = np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), np.where(exact, 1.0, 0.0))
    return {"f1": f1, "iou": iou, "ciou": (iou + iou_neg) / 2, "mcc": mcc}


def _average_precision(tp: np.ndarray, fp: np.ndarray, pos: int) -> float:
    if pos == 0:
        return math.nan
    tp, fp = tp[1:].astype(np.float64), fp[1:].astype(np.float64)  # drop 'predict nothing'
    precision = tp / (tp + fp)
    recall = tp / pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


# ----------------------------------------------------------------------------------------------------
# Per image

def normalize_map(score_map: np.ndarray, normalize: str = "minmax") -> np.ndarray:
    """The map in [0, 1]: per-image min-max ("minmax", constant -> 0) or checked as is ("none")."""
    s = np.asarray(score_map, dtype=np.float64)
    if normalize == "minmax":
        lo, hi = float(s.min()), float(s.max())
        return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    if normalize == "none":
        if s.min() < 0 or s.max() > 1:
            raise ValueError(f"score map spans [{s.min():g}, {s.max():g}], not [0, 1]; "
                             "use normalize='minmax'")
        return s
    raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}")


def localization_scores(score_map: np.ndarray, mask: np.ndarray, *, threshold: float = 0.5,
                        normalize: str = "minmax") -> dict[str, float]:
    """Every per-image localization metric, each the max over the map and its inverse (see module doc)."""
    s, m = _validate(score_map, mask)
    pos, neg = int(m.sum()), int(m.size - m.sum())
    order = np.argsort(-s, kind="stable")
    s_desc, m_desc = s[order], m[order]
    fwd = _curve(s_desc, m_desc)
    inv = _curve(-s_desc[::-1], m_desc[::-1])  # the inverse map, sorted descending
    out: dict[str, float] = {}
    aps = [_average_precision(*fwd, pos), _average_precision(*inv, pos)]
    out["ap"] = math.nan if pos == 0 else max(aps)
    best_f, best_i = _scores(*fwd, pos, neg), _scores(*inv, pos, neg)
    for k in ("ciou", "iou", "f1", "mcc"):
        out[k] = float(max(best_f[k].max(), best_i[k].max()))
    sn = normalize_map(s, normalize)
    tag = f"@{threshold:g}"
    for pred in (sn > threshold, (1.0 - sn) > threshold):
        tp, fp = np.array([np.sum(pred & m)]), np.array([np.sum(pred & ~m)])
        for k, v in _scores(tp, fp, pos, neg).items():
            out[k + tag] = max(out.get(k + tag, -math.inf), float(v[0]))
    return out


# ----------------------------------------------------------------------------------------------------
# Detection

def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC-AUC by the rank statistic with mid-ranks for ties (equals the trapezoid ROC area); nan if one class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # mid-rank of each run of ties
    starts = np.flatnonzero(np.r_[True, np.diff(s_sorted) != 0])
    ends = np.r_[starts[1:], s.size]
    mid = (starts + ends + 1) / 2.0  # 1-based average rank of the run
    ranks[order] = np.repeat(mid, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def detection_scores(scores: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """Image-level AP and ROC-AUC (spliced = 1, higher score = more likely spliced)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D and the same length")
    if not np.isfinite(s).all():
        raise ValueError("detection scores hold nan/inf")
    order = np.argsort(-s, kind="stable")
    m = y.astype(bool)
    tp, fp = _curve(s[order], m[order])
    return {"ap": _average_precision(tp, fp, int(m.sum())), "auc": roc_auc(s, y),
            "n": int(s.size), "n_spliced": int(m.sum())}


# ----------------------------------------------------------------------------------------------------
# Records and tables

def image_record(name: str, label: int, *, score: float | None = None, score_map: np.ndarray | None = None,
                 mask: np.ndarray | None = None, normalize: str = "minmax") -> dict[str, Any]:
    """One image's result: name, label, detection score and (given a map) its localization metrics.

    An authentic image (label 0) without a mask is scored against an all-negative mask; a spliced image
    without a mask gets no localization metrics (it still counts for detection).
    """
    if label not in (0, 1):
        raise ValueError(f"{name}: label must be 0 or 1, got {label!r}")
    rec: dict[str, Any] = {"name": name, "label": int(label), "score": None if score is None else float(score)}
    if score_map is not None:
        if mask is None and label == 0:
            mask = np.zeros(np.shape(score_map), dtype=bool)
        if mask is not None:
            m = np.asarray(mask)
            if label == 0 and m.any():
                raise ValueError(f"{name}: label 0 (authentic) but the mask has {int(m.sum())} positive pixels")
            rec.update(localization_scores(score_map, m, normalize=normalize))
    return rec


def _mean_rows(records: Sequence[Mapping[str, Any]], authentic_ap: float) -> dict[str, Any]:
    row: dict[str, Any] = {"n": len(records)}
    for key in LOCALIZATION_KEYS:
        vals = [authentic_ap if (key == "ap" and r["label"] == 0) else r[key] for r in records]
        row[key] = float(np.mean(vals)) if vals else math.nan
    return row


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The results table: detection AP/AUC, and localization means over spliced-only and all images."""
    records = list(records)
    scored = [r for r in records if r.get("score") is not None]
    det = (detection_scores([r["score"] for r in scored], [r["label"] for r in scored]) if scored
           else {"ap": math.nan, "auc": math.nan, "n": 0, "n_spliced": 0})
    loc = [r for r in records if "ap" in r]
    spliced = [r for r in loc if r["label"] == 1]
    return {
        "n_images": len(records),
        "n_spliced": sum(r["label"] == 1 for r in records),
        "detection": det,
        "localization": {
            "spliced_only": _mean_rows(spliced, authentic_ap=math.nan),
            "all_images": _mean_rows(loc, authentic_ap=0.0),
        },
        "conventions": list(CONVENTIONS),
    }


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def to_markdown(table: Mapping[str, Any], title: str | None = None) -> str:
    """Render `summarize`'s table as Markdown, with both rows labelled and the conventions as notes."""
    lines = [f"### {title}", ""] if title else []
    loc = table["localization"]
    lines.append("| images | n | " + " | ".join(h for _, h in _COLUMNS) + " |")
    lines.append("|---|---:|" + "---:|" * len(_COLUMNS))
    for key, label in (("spliced_only", "spliced only"), ("all_images", "all images (authentic included)")):
        row = loc[key]
        lines.append(f"| {label} | {row['n']} | " + " | ".join(_fmt(row[k]) for k, _ in _COLUMNS) + " |")
    det = table["detection"]
    lines += ["", "| detection | n (spliced) | AP | ROC-AUC |", "|---|---:|---:|---:|",
              f"| image-level | {det['n']} ({det['n_spliced']}) | {_fmt(det['ap'])} | {_fmt(det['auc'])} |", ""]
    lines += [f"- {c}" for c in table.get("conventions", CONVENTIONS)]
    return "\n".join(lines) + "\n"
