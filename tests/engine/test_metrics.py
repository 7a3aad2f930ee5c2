"""mbt.engine.metrics against scikit-learn / scipy (test-only references) on random data, ties included."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import norm
from sklearn.metrics import average_precision_score, recall_score, roc_auc_score, top_k_accuracy_score

from mbt.engine import metrics as M
from mbt.engine.metrics import (average_precision, compute_metrics, d_prime, multihead_metrics, multilabel_metrics,
                                roc_auc, singlelabel_metrics, topk_accuracy)


def _multilabel_data(seed: int, n: int = 400, c: int = 12):
    """Scores (n, c) loosely correlated with multi-hot targets (n, c) of varying class frequency."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.02, 0.5, c)
    targets = (rng.random((n, c)) < rates).astype(np.int64)
    scores = rng.normal(size=(n, c)) + 1.5 * targets
    return scores, targets


def _sk_ap(scores, targets):
    return np.array([average_precision_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])


def _sk_auc(scores, targets):
    return np.array([roc_auc_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])


def _one_hot(labels, c):
    out = np.zeros((len(labels), c))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# ----------------------------------------------------------------------------------------------- AP and AUC
def test_ap_auc_continuous_scores_match_sklearn():
    scores, targets = _multilabel_data(0)
    assert len(np.unique(scores)) == scores.size  # untied
    np.testing.assert_allclose(average_precision(scores, targets), _sk_ap(scores, targets), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(roc_auc(scores, targets), _sk_auc(scores, targets), rtol=1e-12, atol=1e-12)
    # Rank-based: probabilities (a monotone transform of the logits) and float targets give the same values.
    probs = 1.0 / (1.0 + np.exp(-scores))
    np.testing.assert_allclose(average_precision(probs, targets.astype(np.float32)),
                               average_precision(scores, targets), rtol=1e-12)
    np.testing.assert_allclose(roc_auc(probs, targets.astype(bool)), roc_auc(scores, targets), rtol=1e-12)


def test_ap_auc_tied_scores_match_sklearn():
    scores, targets = _multilabel_data(1)
    scores = np.round(scores, 1)  # ~60 distinct values per column of 400: many ties across labels
    for c in range(scores.shape[1]):
        assert len(np.unique(scores[:, c])) < 100
    np.testing.assert_allclose(average_precision(scores, targets), _sk_ap(scores, targets), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(roc_auc(scores, targets), _sk_auc(scores, targets), rtol=1e-12, atol=1e-12)


def test_ap_auc_tie_rule_by_hand():
    # A positive tied with a negative at the top, the second positive last. One threshold per distinct score:
    # AP = 1/2 * P(score >= 1) + 1/2 * P(score >= 0) = 1/2 * 1/2 + 1/2 * 2/3 = 7/12 (putting the tied positive
    # first would give 5/6); AUC = (1/2 for the tied pair + 0) / 2 = 1/4.
    scores = np.array([[1.0], [1.0], [0.0]])
    targets = np.array([[1], [0], [1]])
    assert average_precision(scores, targets)[0] == pytest.approx(7 / 12, abs=1e-15)
    assert average_precision_score(targets[:, 0], scores[:, 0]) == pytest.approx(7 / 12, abs=1e-15)
    assert roc_auc(scores, targets)[0] == pytest.approx(0.25, abs=1e-15)
    # The tie rule must not depend on the row order of the tied pair.
    assert average_precision(scores[[1, 0, 2]], targets[[1, 0, 2]])[0] == pytest.approx(7 / 12, abs=1e-15)


def test_ap_auc_column_blocks(monkeypatch):
    # Tiny column blocks: several blocks, each with a different class mix, must give the same per-class values.
    scores, targets = _multilabel_data(2, n=150, c=9)
    scores = np.round(scores, 1)
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 2 * 150)
    np.testing.assert_allclose(average_precision(scores, targets), _sk_ap(scores, targets), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(roc_auc(scores, targets), _sk_auc(scores, targets), rtol=1e-12, atol=1e-12)


def test_undefined_classes_and_means():
    scores, targets = _multilabel_data(3, n=200, c=8)
    scores = np.round(scores, 1)
    targets[:, 2] = 0  # no positive: AP and AUC undefined
    targets[:, 5] = 0
    targets[:, 6] = 1  # only positives: AUC undefined, AP defined (= 1)
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    assert np.isnan(ap[[2, 5]]).all() and not np.isnan(np.delete(ap, [2, 5])).any()
    assert np.isnan(auc[[2, 5, 6]]).all() and not np.isnan(np.delete(auc, [2, 5, 6])).any()
    assert ap[6] == pytest.approx(average_precision_score(targets[:, 6], scores[:, 6])) == pytest.approx(1.0)
    defined = [0, 1, 3, 4, 6, 7]
    np.testing.assert_allclose(ap[defined], _sk_ap(scores[:, defined], targets[:, defined]), rtol=1e-12)
    auc_defined = [0, 1, 3, 4, 7]
    np.testing.assert_allclose(auc[auc_defined], _sk_auc(scores[:, auc_defined], targets[:, auc_defined]),
                               rtol=1e-12)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning may leak
        summary, rows = multilabel_metrics(scores, targets, label_names=[f"c{i}" for i in range(8)])
    assert summary["num_classes"] == 8 and summary["num_examples"] == 200
    assert summary["num_classes_scored"] == 6
    assert summary["mAP"] == pytest.approx(_sk_ap(scores[:, defined], targets[:, defined]).mean(), rel=1e-12)
    assert summary["num_classes_auc"] == 5
    mauc = _sk_auc(scores[:, auc_defined], targets[:, auc_defined]).mean()
    assert summary["mAUC"] == pytest.approx(mauc, rel=1e-12)
    assert summary["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(mauc), rel=1e-9)
    assert [r["index"] for r in rows] == list(range(8)) and rows[3]["name"] == "c3"
    assert [r["positives"] for r in rows] == targets.sum(axis=0).tolist()
    assert math.isnan(rows[2]["AP"]) and math.isnan(rows[6]["AUC"]) and rows[6]["AP"] == pytest.approx(1.0)


def test_no_positive_anywhere_gives_nan_without_warnings():
    scores = np.random.default_rng(4).normal(size=(30, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary, rows = multilabel_metrics(scores, np.zeros((30, 5)))
    assert math.isnan(summary["mAP"]) and summary["num_classes_scored"] == 0
    assert math.isnan(summary["mAUC"]) and summary["num_classes_auc"] == 0 and math.isnan(summary["d_prime"])
    assert summary["prec@1"] == 0.0
    assert all(math.isnan(r["AP"]) and r["positives"] == 0 for r in rows)


def test_prec_at_1():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.3, 0.2, 0.1], [0.5, 0.5, 0.0]])
    targets = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]])
    # Row 0 right, row 1 wrong, row 2 has no positive (wrong), row 3 tied top between a positive and a negative
    # (expected value 1/2 under a random pick).
    assert multilabel_metrics(scores, targets)[0]["prec@1"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)


def test_multilabel_rejects_non_binary_targets():
    with pytest.raises(ValueError, match="must be 0 or 1"):
        multilabel_metrics(np.zeros((3, 2)), np.array([[0.5, 1], [0, 1], [1, 0]]))


# ----------------------------------------------------------------------------------------------- d-prime
def test_d_prime_matches_scipy():
    for auc in (0.001, 0.1, 0.3, 0.5, 0.72, 0.95, 0.999):
        assert d_prime(auc) == pytest.approx(math.sqrt(2) * norm.ppf(auc), rel=1e-9, abs=1e-12)
    assert d_prime(np.float32(0.8)) == pytest.approx(math.sqrt(2) * norm.ppf(float(np.float32(0.8))), rel=1e-9)
    assert d_prime(1.0) == math.inf and d_prime(0.0) == -math.inf and math.isnan(d_prime(float("nan")))
    assert type(d_prime(np.float64(0.7))) is float
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        d_prime(1.5)


# ----------------------------------------------------------------------------------------------- top-k
def test_topk_matches_sklearn():
    rng = np.random.default_rng(5)
    n, c = 300, 20
    labels = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c)) + 1.0 * _one_hot(labels, c)
    for k in (1, 2, 5):
        assert topk_accuracy(scores, labels, k) == pytest.approx(top_k_accuracy_score(labels, scores, k=k))
    # Classes 0..4 never appear as labels: sklearn then needs labels= to know the columns.
    present = labels >= 5
    for k in (1, 5):
        expected = top_k_accuracy_score(labels[present], scores[present], k=k, labels=np.arange(c))
        assert topk_accuracy(scores[present], labels[present], k) == pytest.approx(expected)
    assert 0 < topk_accuracy(scores, labels, 1) < topk_accuracy(scores, labels, 5) < 1
    assert topk_accuracy(scores, labels, c + 3) == 1.0  # k clipped to C


def test_topk_ties_count_expected_value():
    # Constant scores: chance level k / C (neither 0 nor 1, whatever the class order).
    assert topk_accuracy(np.zeros((4, 10)), np.array([0, 3, 7, 9]), 3) == pytest.approx(0.3)
    # True class tied with one other for the last of 2 slots: 1/2. Strictly inside the top 2: 1.
    scores = np.array([[3.0, 2.0, 2.0, 0.0], [3.0, 2.0, 1.0, 1.0]])
    assert topk_accuracy(scores, np.array([2, 1]), 2) == pytest.approx((0.5 + 1.0) / 2)


def test_topk_validation():
    with pytest.raises(ValueError, match=r"\(4,\).*\(3, 5\)|\(3,\).*\(4,\)"):
        topk_accuracy(np.zeros((3, 5)), np.zeros(4, dtype=int), 1)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        topk_accuracy(np.zeros((3, 5)), np.array([0, 1, 5]), 1)
    with pytest.raises(ValueError, match="positive integer"):
        topk_accuracy(np.zeros((3, 5)), np.array([0, 1, 2]), 0)


# ----------------------------------------------------------------------------------------------- single-label
def test_singlelabel_matches_sklearn():
    rng = np.random.default_rng(6)
    n, c = 250, 15
    labels = rng.integers(0, c - 2, n)  # the last two classes have no examples
    scores = rng.normal(size=(n, c)) + 1.2 * _one_hot(labels, c)
    names = [f"class{i}" for i in range(c)]
    summary, rows = singlelabel_metrics(scores, _one_hot(labels, c), label_names=names)
    assert summary["top1"] == pytest.approx(top_k_accuracy_score(labels, scores, k=1, labels=np.arange(c)))
    assert summary["top5"] == pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=np.arange(c)))
    assert summary["num_examples"] == n
    onehot = _one_hot(labels, c)
    scored = list(range(c - 2))
    assert summary["num_classes_scored"] == c - 2
    assert summary["mAP"] == pytest.approx(_sk_ap(scores[:, scored], onehot[:, scored]).mean(), rel=1e-12)
    mauc = _sk_auc(scores[:, scored], onehot[:, scored]).mean()
    assert summary["mAUC"] == pytest.approx(mauc, rel=1e-12)
    assert summary["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(mauc), rel=1e-9)

    recall = recall_score(labels, scores.argmax(axis=1), labels=np.arange(c), average=None, zero_division=0)
    examples = np.bincount(labels, minlength=c)
    assert [r["examples"] for r in rows] == examples.tolist()
    assert [r["name"] for r in rows] == names
    for r in rows:
        if examples[r["index"]]:
            assert r["accuracy"] == pytest.approx(recall[r["index"]])
        else:
            assert math.isnan(r["accuracy"]) and math.isnan(r["AP"]) and math.isnan(r["AUC"])

    # Integer labels and soft targets (true class = argmax) give the same result.
    assert _same(singlelabel_metrics(scores, labels, names), (summary, rows))
    soft = 0.8 * onehot + 0.2 / c
    assert _same(singlelabel_metrics(scores, soft, names), (summary, rows))


def _same(a, b) -> bool:
    """Equality of metric outputs with NaN == NaN."""
    return json.dumps(a, allow_nan=True, sort_keys=True) == json.dumps(b, allow_nan=True, sort_keys=True)


def test_singlelabel_validation():
    with pytest.raises(ValueError, match="no positive entry"):
        singlelabel_metrics(np.zeros((2, 3)), np.array([[0, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        singlelabel_metrics(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="label_names has 2 names"):
        singlelabel_metrics(np.zeros((2, 3)), np.array([0, 1]), label_names=["a", "b"])


# ----------------------------------------------------------------------------------------------- multi-head
def _multihead_data(seed: int, n: int = 400, ka: int = 7, kb: int = 11):
    rng = np.random.default_rng(seed)
    ya, yb = rng.integers(0, ka, n), rng.integers(0, kb, n)
    la = rng.normal(size=(n, ka)) + 1.0 * _one_hot(ya, ka)
    lb = rng.normal(size=(n, kb)) + 1.0 * _one_hot(yb, kb)
    scores = np.concatenate([la, lb], axis=1)
    targets = np.concatenate([_one_hot(ya, ka), _one_hot(yb, kb)], axis=1)
    return scores, targets, (la, ya), (lb, yb)


def _brute_action_top5(la, ya, lb, yb):
    """The full outer product of the softmaxes, fully sorted: is the true pair among the 5 highest?"""
    ka, kb = la.shape[1], lb.shape[1]
    joint = (softmax(la, axis=1)[:, :, None] * softmax(lb, axis=1)[:, None, :]).reshape(len(la), ka * kb)
    top5 = np.argsort(-joint, axis=1)[:, :5]
    return float(np.mean([(ya[i] * kb + yb[i]) in top5[i] for i in range(len(la))]))


def test_multihead_matches_brute_force_and_sklearn(monkeypatch):
    scores, targets, (la, ya), (lb, yb) = _multihead_data(7)
    heads = {"verb": 7, "noun": 11}
    summary, rows = multihead_metrics(scores, targets, heads)
    for name, logits, y, k_classes in (("verb", la, ya, 7), ("noun", lb, yb, 11)):
        for k in (1, 5):
            expected = top_k_accuracy_score(y, logits, k=k, labels=np.arange(k_classes))
            assert summary[f"{name}_top{k}"] == pytest.approx(expected)
    both = np.mean((la.argmax(axis=1) == ya) & (lb.argmax(axis=1) == yb))
    assert summary["action_top1"] == pytest.approx(both)
    action5 = _brute_action_top5(la, ya, lb, yb)
    assert 0.2 < action5 < 0.9  # a discriminating case: neither always nor never
    assert summary["action_top5"] == pytest.approx(action5)
    assert summary["action_top1"] < summary["action_top5"]
    assert summary["num_examples"] == 400

    # Rows chunked (3 rows per chunk of the 77-column joint matrix) give the same action top-5.
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 3 * 77)
    assert multihead_metrics(scores, targets, heads)[0]["action_top5"] == pytest.approx(action5)

    # Per-class rows: within-head index, per-head recall (sklearn), names from a flat list.
    assert [(r["head"], r["index"]) for r in rows] == [("verb", i) for i in range(7)] + [("noun", i) for i in range(11)]
    recall_b = recall_score(yb, lb.argmax(axis=1), labels=np.arange(11), average=None, zero_division=0)
    np.testing.assert_allclose([r["accuracy"] for r in rows[7:]], recall_b)
    assert [r["examples"] for r in rows[:7]] == np.bincount(ya, minlength=7).tolist()
    names = {"verb": [f"v{i}" for i in range(7)], "noun": [f"n{i}" for i in range(11)]}
    flat = names["verb"] + names["noun"]
    assert [r["name"] for r in multihead_metrics(scores, targets, heads, label_names=names)[1]] == flat
    assert [r["name"] for r in multihead_metrics(scores, targets, heads, label_names=flat)[1]] == flat


def test_multihead_softmax_is_stable():
    scores, targets, (la, ya), (lb, yb) = _multihead_data(8, n=100)
    heads = {"verb": 7, "noun": 11}
    reference = multihead_metrics(scores, targets, heads)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a naive exp(1000) overflows
        shifted = multihead_metrics(scores + 1000.0, targets, heads)[0]
    assert shifted["action_top5"] == pytest.approx(reference["action_top5"])
    assert shifted["action_top5"] == pytest.approx(_brute_action_top5(la, ya, lb, yb))


def test_multihead_three_heads_have_no_action():
    rng = np.random.default_rng(9)
    sizes = {"a": 7, "b": 5, "c": 6}
    scores = rng.normal(size=(50, 18))
    targets = np.concatenate([_one_hot(rng.integers(0, k, 50), k) for k in sizes.values()], axis=1)
    summary, rows = multihead_metrics(scores, targets, sizes)
    assert [r["head"] for r in rows] == ["a"] * 7 + ["b"] * 5 + ["c"] * 6
    assert "action_top1" not in summary and {"a_top1", "b_top5", "c_top1"} <= set(summary)


def test_multihead_validation():
    scores, targets, _, _ = _multihead_data(10, n=20)
    with pytest.raises(ValueError, match="sum to 17 classes but scores have 18"):
        multihead_metrics(scores, targets, {"verb": 7, "noun": 10})
    bad = targets.copy()
    bad[3, 7:] = 0
    with pytest.raises(ValueError, match="head 'noun'"):
        multihead_metrics(scores, bad, {"verb": 7, "noun": 11})


# ----------------------------------------------------------------------------------------------- dispatch
def test_compute_metrics_dispatch():
    scores, targets = _multilabel_data(11, n=60, c=6)
    assert _same(compute_metrics(scores, targets, "multi_label"), multilabel_metrics(scores, targets))
    labels = np.arange(60) % 6
    assert _same(compute_metrics(scores, labels, "single_label"), singlelabel_metrics(scores, labels))
    assert _same(compute_metrics(scores, _one_hot(labels, 6), "single_label"), singlelabel_metrics(scores, labels))
    mh_scores, mh_targets, _, _ = _multihead_data(12, n=40)
    heads = {"verb": 7, "noun": 11}
    assert _same(compute_metrics(mh_scores, mh_targets, "multi_head", heads=heads),
                 multihead_metrics(mh_scores, mh_targets, heads))


def test_compute_metrics_errors():
    scores, targets = np.zeros((5, 3)), np.zeros((5, 4))
    with pytest.raises(ValueError, match="'multi_label', 'single_label', 'multi_head'.*'multilabel'"):
        compute_metrics(scores, np.zeros((5, 3)), "multilabel")
    for problem in ("multi_label", "single_label", "multi_head"):
        with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 4\)"):
            compute_metrics(scores, targets, problem, heads={"a": 3} if problem == "multi_head" else None)
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4,\)"):
        compute_metrics(scores, np.zeros(4, dtype=int), "single_label")
    with pytest.raises(ValueError, match="needs heads"):
        compute_metrics(scores, np.eye(3)[[0, 1, 2, 0, 1]], "multi_head")
    with pytest.raises(ValueError, match="only used with problem_type 'multi_head'"):
        compute_metrics(scores, np.zeros((5, 3)), "multi_label", heads={"a": 3})
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        average_precision(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc(np.array([[np.nan], [0.0]]), np.array([[1], [0]]))


# ----------------------------------------------------------------------------------------------- JSON
def test_results_are_plain_json_numbers():
    scores, targets = _multilabel_data(13, n=50, c=5)
    targets[:, 0] = 0  # NaN entries must survive as float('nan')
    mh_scores, mh_targets, _, _ = _multihead_data(14, n=30)
    outputs = [
        multilabel_metrics(scores.astype(np.float32), targets),
        singlelabel_metrics(scores, np.arange(50) % 4),
        multihead_metrics(mh_scores, mh_targets, {"verb": 7, "noun": 11}),
    ]
    for summary, rows in outputs:
        for record in [summary, *rows]:
            for key, value in record.items():
                assert type(value) in (int, float, str), (key, type(value))
        text = json.dumps({"summary": summary, "rows": rows}, allow_nan=True)
        assert json.loads(text)["summary"].keys() == summary.keys()
    assert "NaN" in json.dumps(outputs[0], allow_nan=True)
    assert type(topk_accuracy(scores, np.arange(50) % 5, 2)) is float
