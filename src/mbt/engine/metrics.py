"""Evaluation metrics for the three MBT problem types, in numpy only (no scikit-learn or scipy at run time).

  multi_label   AudioSet: per-class average precision (mAP), ROC AUC (mAUC), d-prime, prec@1.
  single_label  VGGSound / Kinetics: top-1 / top-5 accuracy, plus one-vs-rest mAP / mAUC / d-prime over the one-hot
                targets (as the VGGSound repository's evaluation does).
  multi_head    EPIC-KITCHENS: per-head top-1 / top-5 and, for two heads, action accuracy (both heads right) and
                action top-5 on the outer product of the heads' softmaxes (Scenic's `joint_top_k`).

`compute_metrics(scores, targets, problem_type)` dispatches. Every function takes scores of shape (N, C) (logits or
probabilities: AP, AUC and top-k only depend on the order of the scores within a class or an example) and returns
plain Python numbers, so the results can be written with `json.dumps(..., allow_nan=True)`; an undefined value (a
class without positives, say) is float('nan').

Conventions, and why:
  * AP equals sklearn.metrics.average_precision_score: examples with equal scores form one threshold (they are
    accepted or rejected together), so AP does not depend on how the sort orders ties.
  * AUC equals sklearn.metrics.roc_auc_score: the Mann-Whitney statistic with average ranks, i.e. a tied
    (positive, negative) pair counts 1/2 -- the same as the trapezoidal area under the ROC curve.
  * Means over classes (mAP, mAUC) skip the classes where the metric is undefined (no positive, or no negative):
    the AudioSet convention, since an evaluation subset rarely holds every class.
  * Top-k with tied scores (and prec@1, action accuracy) counts the expected value under a uniformly random order
    of the tied entries: a true class tied with e entries for the last s free slots scores s / e. This is exact for
    untied scores (equal to sklearn.metrics.top_k_accuracy_score) and, like the 1/2 rule of AUC, never rewards a
    degenerate model: constant scores give k / C, chance level, rather than 0 or 1 depending on class order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from ..errors import InputError
from ..models.config import PROBLEM_TYPES


# Column blocks for the per-class sorts hold at most this many elements (a few tens of MB of work arrays), so
# AudioSet-sized evaluations (20k x 527) stay small in memory; the joint (verb x noun) matrix is cut into row
# chunks of the same size.
_BLOCK_ELEMENTS = 1 << 21

LabelNames = Sequence[str] | Mapping[str, Sequence[str]] | None


# ------------------------------------------------------------------------------------------------ validation
def _as_scores(scores) -> np.ndarray:
    """float64 (N, C) with N, C >= 1 and only finite values."""
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
        raise InputError(f"scores must have shape (N, C) with N >= 1 and C >= 1, got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
            or s.dtype == np.bool_):
        raise InputError(f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    bad = ~np.isfinite(s)
    if bad.any():
        raise InputError(f"scores of shape {s.shape} hold {int(bad.sum())} non-finite values (NaN or inf); "
                         "metrics need finite scores")
    return s


def _as_matrix_targets(targets, scores_shape: tuple[int, ...]) -> np.ndarray:
    """float64 (N, C) targets with the same shape as the scores."""
    t = np.asarray(targets)
    if t.shape != tuple(scores_shape):
        raise InputError(f"scores {tuple(scores_shape)} and targets {t.shape} must have the same shape (N, C)")
    t = t.astype(np.float64, copy=False)
    if not np.isfinite(t).all():
        raise InputError(f"targets of shape {t.shape} hold non-finite values")
    return t


def _as_binary_targets(targets, scores_shape: tuple[int, ...]) -> np.ndarray:
    """float64 (N, C) targets in {0, 1} (bool, int or float input)."""
    t = _as_matrix_targets(targets, scores_shape)
    if not np.isin(t, (0.0, 1.0)).all():
        values = np.unique(t[~np.isin(t, (0.0, 1.0))])[:5]
        raise InputError(f"targets of shape {t.shape} must be 0 or 1 (multi-hot), found values such as "
                         f"{values.tolist()}")
    return t


def _as_labels(labels, num_examples: int, num_classes: int, what: str = "labels") -> np.ndarray:
    """int64 (N,) class indices in [0, num_classes)."""
    y = np.asarray(labels)
    if y.shape != (num_examples,):
        raise InputError(f"{what} must have shape ({num_examples},) to match scores ({num_examples}, "
                         f"{num_classes}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()):
            raise InputError(f"{what} must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"{what} must be class indices in [0, {num_classes}), found {int(y.min())}..{int(y.max())}")
    return y


def _labels_from_targets(t: np.ndarray, what: str = "targets") -> np.ndarray:
    """int64 (N,): the argmax of one-hot or soft targets (N, C); a row without a positive entry is an error."""
    if (t < 0).any():
        raise InputError(f"{what} of shape {t.shape} must be one-hot or soft (non-negative) labels")
    empty = t.max(axis=1) <= 0
    if empty.any():
        raise InputError(f"{what} of shape {t.shape}: {int(empty.sum())} rows have no positive entry (e.g. row "
                         f"{int(np.flatnonzero(empty)[0])}); single-label targets need one true class per row")
    return np.argmax(t, axis=1).astype(np.int64)


def _names(label_names: LabelNames, num_classes: int) -> list[str]:
    """The label names as a flat list of num_classes strings (default: the class indices)."""
    if label_names is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(label_names, Mapping):  # {head: names}, concatenated in dict order
        flat = [str(n) for names in label_names.values() for n in names]
    else:
        flat = [str(n) for n in label_names]
    if len(flat) != num_classes:
        raise InputError(f"label_names has {len(flat)} names but scores have {num_classes} classes (columns)")
    return flat


def _nanmean(values: np.ndarray) -> float:
    """Mean over the defined (non-NaN) entries, NaN if there is none -- without numpy's 'Mean of empty slice'."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")




# ------------------------------------------------------------------------------------------ AP and ROC AUC
def _ap_auc(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP and AUC, each (C,) float64, for validated float64 scores and 0/1 targets of shape (N, C).

    Each column is sorted by descending score; entries with equal scores form a group (one threshold). With tp the
    running count of positives and `end` the last position of each entry's group:
      AP  = sum_k (R_k - R_{k-1}) * P_k over thresholds k  =  (1 / P) * sum over positives of precision(end),
            precision(end) = tp[end] / (end + 1): every positive enters the recall at its group's threshold.
      AUC = U / (P * Nneg), U = (sum of the positives' ascending average ranks) - P (P + 1) / 2 (Mann-Whitney;
            average ranks give a tied positive/negative pair 1/2).
    Only the order of the scores matters, so logits, probabilities and any monotone transform give the same values.
    """
    n, c = scores.shape
    ap = np.full(c, np.nan)
    auc = np.full(c, np.nan)
    block = max(1, _BLOCK_ELEMENTS // n)
    position = np.arange(n)
    for lo in range(0, c, block):
        # Work on (B, N) class-major copies: sorting and scanning along contiguous rows is several times faster.
        # The sort need not be stable: the order within a group of equal scores does not change AP or AUC.
        s_blk = np.ascontiguousarray(scores[:, lo:lo + block].T)
        order = np.argsort(-s_blk, axis=1)  # descending scores
        s = np.take_along_axis(s_blk, order, axis=1)
        t = np.take_along_axis(np.ascontiguousarray(targets[:, lo:lo + block].T), order, axis=1)
        is_end = np.empty(s.shape, dtype=bool)  # last entry of a group of equal scores
        is_end[:, :-1] = s[:, :-1] != s[:, 1:]
        is_end[:, -1] = True
        is_start = np.empty(s.shape, dtype=bool)
        is_start[:, 0] = True
        is_start[:, 1:] = is_end[:, :-1]
        # Group bounds for every entry: the next end at or after it, the last start at or before it.
        end = np.minimum.accumulate(np.where(is_end, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
        start = np.maximum.accumulate(np.where(is_start, position, 0), axis=1)
        tp = np.cumsum(t, axis=1)
        positives = tp[:, -1]
        negatives = n - positives
        precision = np.take_along_axis(tp, end, axis=1) / (end + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ap_blk = (t * precision).sum(axis=1) / positives
            rank_desc = (start + end) / 2.0 + 1.0  # 1-based average rank in descending order
            rank_asc_sum = positives * (n + 1) - (t * rank_desc).sum(axis=1)
            auc_blk = (rank_asc_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
        ap_blk[positives == 0] = np.nan
        auc_blk[(positives == 0) | (negatives == 0)] = np.nan
        ap[lo:lo + block] = ap_blk
        auc[lo:lo + block] = auc_blk
    return ap, auc


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision.

    scores (N, C) float: logits are fine (AP is rank-based: only the order within a class matters).
    targets (N, C) in {0, 1} (bool, int or float).
    Returns (C,) float64, NaN for a class without positives. Equal to
    sklearn.metrics.average_precision_score(targets[:, c], scores[:, c]), including ties (equal scores form one
    threshold).
    """
    s = _as_scores(scores)
    return _ap_auc(s, _as_binary_targets(targets, s.shape))[0]


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class area under the ROC curve.

    scores (N, C) float, targets (N, C) in {0, 1}. Returns (C,) float64, NaN for a class whose targets are all 0
    or all 1. Equal to sklearn.metrics.roc_auc_score per class, including ties (a tied positive/negative pair
    counts 1/2).
    """
    s = _as_scores(scores)
    return _ap_auc(s, _as_binary_targets(targets, s.shape))[1]


def d_prime(auc: float) -> float:
    """sqrt(2) * Phi^-1(auc), the d' of an equal-variance Gaussian model with that AUC.

    AudioSet convention: computed from the mean AUC over classes. auc 1.0 -> inf, 0.0 -> -inf, NaN -> NaN.
    """
    a = float(auc)
    if math.isnan(a):
        return float("nan")
    if not 0.0 <= a <= 1.0:
        raise InputError(f"d_prime needs an AUC in [0, 1], got {a}")
    if a == 1.0:
        return float("inf")
    if a == 0.0:
        return float("-inf")
    return float(math.sqrt(2.0) * NormalDist().inv_cdf(a))


# ------------------------------------------------------------------------------------------------ top-k
def _topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) float64 in [0, 1]: 1 if labels[i] is among the k highest scores of row i, 0 if not.

    With ties, the probability of being in the top k under a random order of the tied entries: with g entries
    strictly above the true class's score and e entries equal to it (itself included), (k - g) / e clipped to
    [0, 1]. Untied rows give exactly 0 or 1.
    """
    k = min(int(k), scores.shape[1])
    true = scores[np.arange(scores.shape[0]), labels][:, None]
    greater = (scores > true).sum(axis=1)
    equal = (scores == true).sum(axis=1)
    return np.clip((k - greater) / equal, 0.0, 1.0)


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of examples whose true class is among the k highest scores.

    scores (N, C) float, labels (N,) int in [0, C), k >= 1 (k > C is clipped to C). Equal to
    sklearn.metrics.top_k_accuracy_score for untied scores; tied scores count the expected value under a random
    order of the ties (see the module docstring).
    """
    s = _as_scores(scores)
    y = _as_labels(labels, *s.shape)
    return float(_topk_hits(s, y, _check_k(k)).mean())


# ------------------------------------------------------------------------------------------------ problems
def multilabel_metrics(scores: np.ndarray, targets: np.ndarray,
                       label_names: LabelNames = None) -> tuple[dict, list[dict]]:
    """AudioSet-style metrics for scores (N, C) and multi-hot targets (N, C) in {0, 1}.

    Summary: 'mAP' (mean AP over classes with >= 1 positive), 'num_classes_scored', 'num_classes', 'mAUC' (mean
    AUC over classes with both positives and negatives), 'num_classes_auc', 'd_prime' (from mAUC), 'prec@1'
    (fraction of examples whose top-scoring class is a positive; examples without positives count as wrong),
    'num_examples'. Per-class rows: 'index', 'name', 'positives', 'AP', 'AUC' (NaN where undefined).
    """
    s = _as_scores(scores)
    t = _as_binary_targets(targets, s.shape)
    names = _names(label_names, s.shape[1])
    ap, auc = _ap_auc(s, t)
    # Means skip undefined classes (NaN): an evaluation set rarely holds every class, and a class without
    # positives has no AP at all (the AudioSet convention).
    m_auc = _nanmean(auc)
    # prec@1 with tied top scores: the share of the tied top classes that are positive (a random pick among them).
    top = s == s.max(axis=1, keepdims=True)
    prec1 = ((top & (t > 0)).sum(axis=1) / top.sum(axis=1)).mean()
    positives = t.sum(axis=0)
    summary = {
        "mAP": _nanmean(ap),
        "num_classes_scored": int((~np.isnan(ap)).sum()),
        "num_classes": int(s.shape[1]),
        "mAUC": m_auc,
        "num_classes_auc": int((~np.isnan(auc)).sum()),
        "d_prime": d_prime(m_auc),
        "prec@1": float(prec1),
        "num_examples": int(s.shape[0]),
    }
    rows = [{"index": c, "name": names[c], "positives": int(positives[c]), "AP": float(ap[c]),
             "AUC": float(auc[c])} for c in range(s.shape[1])]
    return summary, rows


def singlelabel_metrics(scores: np.ndarray, targets: np.ndarray,
                        label_names: LabelNames = None) -> tuple[dict, list[dict]]:
    """VGGSound / Kinetics-style metrics.

    scores (N, C); targets (N, C) one-hot or soft (the true class is the argmax of each row), or (N,) int labels.
    Summary: 'top1', 'top5' (k clipped to C), 'mAP', 'num_classes_scored', 'mAUC', 'd_prime' (one-vs-rest over the
    one-hot targets, as the VGGSound repository's evaluation does), 'num_examples'. Per-class rows: 'index',
    'name', 'examples' (true labels of the class), 'accuracy' (top-1 recall, NaN without examples), 'AP', 'AUC'.
    """
    s = _as_scores(scores)
    n, c = s.shape
    t = np.asarray(targets)
    if t.ndim == 1:
        y = _as_labels(t, n, c, what="targets")
    else:
        y = _labels_from_targets(_as_matrix_targets(t, s.shape))
    names = _names(label_names, c)
    one_hot = np.zeros((n, c))
    one_hot[np.arange(n), y] = 1.0
    ap, auc = _ap_auc(s, one_hot)
    m_auc = _nanmean(auc)
    hits1 = _topk_hits(s, y, 1)
    examples = np.bincount(y, minlength=c)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.bincount(y, weights=hits1, minlength=c) / examples  # 0/0 -> NaN: class without examples
    summary = {
        "top1": float(hits1.mean()),
        "top5": float(_topk_hits(s, y, 5).mean()),
        "mAP": _nanmean(ap),
        "num_classes_scored": int((~np.isnan(ap)).sum()),
        "mAUC": m_auc,
        "d_prime": d_prime(m_auc),
        "num_examples": int(n),
    }
    rows = [{"index": i, "name": names[i], "examples": int(examples[i]), "accuracy": float(accuracy[i]),
             "AP": float(ap[i]), "AUC": float(auc[i])} for i in range(c)]
    return summary, rows


def _softmax(x: np.ndarray) -> np.ndarray:
    """Row softmax of (n, K) logits; subtracting the row max keeps exp() from overflowing."""
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _joint_topk_hits(logits_a: np.ndarray, labels_a: np.ndarray, logits_b: np.ndarray, labels_b: np.ndarray,
                     k: int) -> np.ndarray:
    """(N,) top-k hits of the pair (a, b) on softmax(a) x softmax(b), flattened as a * K_b + b (Scenic's joint_top_k).

    Rows are processed in chunks so the (chunk, K_a * K_b) joint matrix stays small (EPIC: 97 x 300 = 29100
    columns). Membership of the true pair in the top k is decided by counting the entries above it (and tied with
    it), which needs no sort or partition and follows the tie rule of `_topk_hits`.
    """
    n, ka = logits_a.shape
    kb = logits_b.shape[1]
    k = min(k, ka * kb)
    hits = np.empty(n)
    chunk = max(1, _BLOCK_ELEMENTS // (ka * kb))
    for lo in range(0, n, chunk):
        pa = _softmax(logits_a[lo:lo + chunk])
        pb = _softmax(logits_b[lo:lo + chunk])
        joint = (pa[:, :, None] * pb[:, None, :]).reshape(len(pa), ka * kb)
        rows = np.arange(len(pa))
        # Read the true entry from the joint matrix itself, so it compares bit-exactly with its own column.
        true = joint[rows, labels_a[lo:lo + chunk] * kb + labels_b[lo:lo + chunk]][:, None]
        greater = (joint > true).sum(axis=1)
        equal = (joint == true).sum(axis=1)
        hits[lo:lo + chunk] = np.clip((k - greater) / equal, 0.0, 1.0)
    return hits


def _check_heads(heads, num_classes: int) -> dict[str, int]:
    if not isinstance(heads, Mapping) or not heads:
        raise InputError(f"heads must be a non-empty dict {{head name: classes}}, got {heads!r}")
    out = {}
    for name, size in heads.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise InputError(f"heads[{name!r}] must be a positive number of classes, got {size!r}")
        out[str(name)] = int(size)
    if sum(out.values()) != num_classes:
        raise InputError(f"heads {out} sum to {sum(out.values())} classes but scores have {num_classes} columns")
    return out


def multihead_metrics(scores: np.ndarray, targets: np.ndarray, heads: Mapping[str, int],
                      label_names: LabelNames = None) -> tuple[dict, list[dict]]:
    """EPIC-KITCHENS-style metrics for several single-label heads side by side.

    scores, targets (N, sum(heads)): the heads concatenated in dict order (e.g. {'verb': 97, 'noun': 300}: columns
    0..96 verb, 97..396 noun); targets one-hot (or soft: argmax) within each head. label_names: a flat list of
    sum(heads) names, or {head: names}.
    Summary: f'{h}_top1', f'{h}_top5' for each head h; with exactly two heads a, b also 'action_top1' (both
    argmaxes right) and 'action_top5' (the pair among the 5 highest entries of softmax(a) x softmax(b)); and
    'num_examples'. Per-class rows: 'head', 'index' (within the head), 'name', 'examples', 'accuracy' (top-1 recall,
    NaN without examples).
    """
    s = _as_scores(scores)
    t = _as_matrix_targets(targets, s.shape)
    n, c = s.shape
    heads = _check_heads(heads, c)
    names = _names(label_names, c)
    summary: dict = {}
    rows: list[dict] = []
    per_head = []  # (logits (N, K), labels (N,), top-1 hits (N,))
    lo = 0
    for head, size in heads.items():
        logits = s[:, lo:lo + size]
        y = _labels_from_targets(t[:, lo:lo + size], what=f"targets of head {head!r} (columns {lo}..{lo + size - 1})")
        hits1 = _topk_hits(logits, y, 1)
        summary[f"{head}_top1"] = float(hits1.mean())
        summary[f"{head}_top5"] = float(_topk_hits(logits, y, 5).mean())
        examples = np.bincount(y, minlength=size)
        with np.errstate(divide="ignore", invalid="ignore"):
            accuracy = np.bincount(y, weights=hits1, minlength=size) / examples
        rows += [{"head": head, "index": i, "name": names[lo + i], "examples": int(examples[i]),
                  "accuracy": float(accuracy[i])} for i in range(size)]
        per_head.append((logits, y, hits1))
        lo += size
    if len(per_head) == 2:
        (la, ya, ha), (lb, yb, hb) = per_head
        # The joint argmax of softmax(a) x softmax(b) is the pair of argmaxes, so action top-1 is both heads
        # right; with ties, the heads' tie shares multiply (independent random picks).
        summary["action_top1"] = float((ha * hb).mean())
        summary["action_top5"] = float(_joint_topk_hits(la, ya, lb, yb, 5).mean())
    summary["num_examples"] = int(n)
    return summary, rows


def compute_metrics(scores: np.ndarray, targets: np.ndarray, problem_type: str,
                    heads: Mapping[str, int] | None = None,
                    label_names: LabelNames = None) -> tuple[dict, list[dict]]:
    """The metrics of `problem_type` ('multi_label', 'single_label' or 'multi_head'; the latter needs `heads`).

    scores (N, C); targets (N, C) (or (N,) int labels for 'single_label'). Returns (summary, per-class rows).
    """
    if problem_type not in PROBLEM_TYPES:
        raise InputError(f"problem_type must be one of {', '.join(map(repr, PROBLEM_TYPES))}, got {problem_type!r}")
    s_shape = np.shape(scores)
    t_shape = np.shape(targets)
    single_int = problem_type == "single_label" and len(t_shape) == 1
    if len(s_shape) != 2 or (t_shape != s_shape and not (single_int and t_shape[0] == s_shape[0])):
        expected = "(N, C), or (N,) int labels for single_label" if problem_type == "single_label" else "(N, C)"
        raise InputError(f"scores {tuple(s_shape)} and targets {tuple(t_shape)} do not match: scores must be (N, C) "
                         f"and targets {expected}")
    if problem_type == "multi_head":
        if heads is None:
            raise InputError("problem_type 'multi_head' needs heads, e.g. {'verb': 97, 'noun': 300}")
        return multihead_metrics(scores, targets, heads, label_names)
    if heads is not None:
        raise InputError(f"heads is only used with problem_type 'multi_head', got heads={dict(heads)!r} for "
                         f"{problem_type!r}")
    if problem_type == "multi_label":
        return multilabel_metrics(scores, targets, label_names)
    return singlelabel_metrics(scores, targets, label_names)
