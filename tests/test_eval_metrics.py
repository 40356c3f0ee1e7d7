"""Verification metrics against hand-computed cases and brute-force / scipy references."""
import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from meer.evaluation import metrics as M

# genuine 0.9 0.8 0.6 / impostor 0.7 0.5 0.4
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
LABELS = np.array([1, 1, 0, 1, 0, 0])


def test_roc_curve_by_hand():
    fpr, tpr, thr = M.roc_curve(SCORES, LABELS)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


def test_roc_curve_ties_share_one_threshold():
    fpr, tpr, thr = M.roc_curve([0.5, 0.5, 0.2], [1, 0, 0])
    np.testing.assert_allclose(thr[1:], [0.5, 0.2])
    np.testing.assert_allclose(tpr, [0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0.5, 1])


def brute_roc(scores, labels):
    """Reference: evaluate each threshold by counting."""
    labels = labels.astype(bool)
    ths = np.r_[np.inf, np.sort(np.unique(scores))[::-1]]
    tpr = np.array([(scores[labels] >= t).mean() for t in ths])
    fpr = np.array([(scores[~labels] >= t).mean() for t in ths])
    return fpr, tpr, ths


def test_roc_and_auc_match_references_on_random_scores():
    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.5
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounding makes many ties
    fpr, tpr, thr = M.roc_curve(scores, labels)
    bf, bt, bth = brute_roc(scores, labels)
    np.testing.assert_allclose(fpr, bf)
    np.testing.assert_allclose(tpr, bt)
    np.testing.assert_allclose(thr, bth)
    u = mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert M.roc_auc(scores, labels) == pytest.approx(u / (labels.sum() * (~labels).sum()), abs=1e-12)


def test_auc_by_hand():
    assert M.roc_auc(SCORES, LABELS) == pytest.approx(8 / 9)
    assert M.roc_auc([1, 2], [0, 1]) == 1.0
    assert M.roc_auc([2, 1], [0, 1]) == 0.0
    assert M.roc_auc([1, 1], [0, 1]) == 0.5


def test_eer_by_hand():
    # at threshold 0.7: FAR = 1/3 (0.7 accepted), FRR = 1/3 (0.6 rejected)
    assert M.eer(SCORES, LABELS) == pytest.approx(1 / 3)
    # crossing inside a vertical ROC segment: FPR stays 1/3 while FNR falls from 1/2 to 0
    s = np.array([0.9, 0.85, 0.8, 0.1, 0.05])
    y = np.array([1, 0, 1, 0, 0])
    assert M.eer(s, y) == pytest.approx(1 / 3)
    # crossing inside a diagonal segment (tied scores): FPR 0 -> 1, FNR 1 -> 0, meeting at 1/2
    assert M.eer([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert M.eer([0.9, 0.1], [1, 0]) == 0.0


def test_eer_matches_root_of_interpolated_curves():
    from scipy.optimize import brentq

    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.4
    scores = rng.normal(labels * 1.5, 1.0)
    fpr, tpr, _ = brute_roc(scores, labels)
    # parametrise the ROC polyline by cumulative index and find FNR - FPR = 0 on it
    idx = np.arange(fpr.size, dtype=float)
    f = lambda u: np.interp(u, idx, 1 - tpr) - np.interp(u, idx, fpr)
    u0 = brentq(f, 0, fpr.size - 1)
    assert M.eer(scores, labels) == pytest.approx(np.interp(u0, idx, fpr), abs=1e-9)


def test_tar_at_far_by_hand_and_brute_force():
    assert M.tar_at_far(SCORES, LABELS, 0.0) == (pytest.approx(2 / 3), 0.8)
    assert M.tar_at_far(SCORES, LABELS, 0.5) == (1.0, 0.6)
    assert M.tar_at_far(SCORES, LABELS, 1 / 3)[0] == 1.0
    rng = np.random.default_rng(7)
    labels = rng.random(2000) < 0.5
    scores = rng.normal(labels * 2.0, 1.0)
    gen, imp = scores[labels], scores[~labels]
    for far in (1e-3, 1e-2, 0.1):
        tar, thr = M.tar_at_far(scores, labels, far)
        assert (imp >= thr).mean() <= far
        # brute force over every candidate threshold
        best = max((gen >= t).mean() for t in np.r_[np.inf, scores] if (imp >= t).mean() <= far)
        assert tar == pytest.approx(best)
    with pytest.raises(M.MetricError, match="FAR"):
        M.tar_at_far(SCORES, LABELS, 2.0)


def test_kfold_accuracy_by_hand():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5])
    labels = np.array([1, 0, 1, 0, 0])
    folds = np.array([0, 0, 1, 1, 1])
    r = M.kfold_accuracy(scores, labels, folds)
    # fold 0 judged with t fitted on fold 1 (0.65, all right); fold 1 with t = 0.5 from fold 0 (0.5 accepted: wrong)
    np.testing.assert_allclose(r.thresholds, [0.65, 0.5])
    np.testing.assert_allclose(r.fold_accuracies, [1.0, 2 / 3])
    assert r.accuracy == pytest.approx(5 / 6)
    assert r.std == pytest.approx(1 / 6)
    np.testing.assert_array_equal(r.correct, [True, True, True, True, False])


def test_kfold_accuracy_matches_reference_on_random_scores():
    rng = np.random.default_rng(11)
    n = 600
    labels = np.tile([True, False], n // 2)
    scores = rng.normal(labels * 1.2, 1.0)
    folds = np.repeat(np.arange(10), n // 10)
    r = M.kfold_accuracy(scores, labels, folds)
    accs = []
    for f in range(10):
        tr, te = folds != f, folds == f
        # reference: exhaustive search over every training score as a threshold (accept >= t)
        cand = np.r_[np.sort(scores[tr]), np.inf]
        acc_tr = [((scores[tr] >= t) == labels[tr]).mean() for t in cand]
        best = max(acc_tr)
        # every maximiser splits the training scores identically to our midpoint threshold
        t_ref = cand[int(np.argmax(acc_tr))]
        t_ours = r.thresholds[f]
        assert ((scores[tr] >= t_ours) == labels[tr]).mean() == pytest.approx(best)
        lower = np.max(scores[tr][scores[tr] < t_ref], initial=-np.inf)
        assert lower < t_ours <= t_ref
        accs.append(((scores[te] >= t_ours) == labels[te]).mean())
    assert r.accuracy == pytest.approx(np.mean(accs))


def test_rank1():
    sim = np.array([[0.9, 0.1, 0.3], [0.2, 0.1, 0.8], [0.5, 0.5, 0.0]])
    assert M.rank1(sim, ["a", "b", "b"], ["a", "b", "c"]) == pytest.approx(1 / 3)  # ties: first wins
    with pytest.raises(M.MetricError, match="expected"):
        M.rank1(sim, ["a"], ["a", "b", "c"])


def test_bootstrap_ci_is_deterministic_and_sane():
    x = np.r_[np.ones(80), np.zeros(20)]
    a = M.bootstrap_ci(x, seed=0)
    assert a == M.bootstrap_ci(x, seed=0)
    assert a[0] < 0.8 < a[1]
    # binomial standard error is 0.04: the 95% interval is about +-0.08
    assert 0.1 < a[1] - a[0] < 0.2
    assert M.bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    med = M.bootstrap_ci(np.arange(10.0), statistic=np.median, n=200)
    assert med[0] <= 4.5 <= med[1]


def test_bad_inputs_have_clear_messages():
    with pytest.raises(M.MetricError, match="both genuine and impostor"):
        M.roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(M.MetricError, match="NaN"):
        M.eer([np.nan, 0.2], [1, 0])
    with pytest.raises(M.MetricError, match="labels"):
        M.roc_auc([0.1, 0.2, 0.3], [1, 0])


def test_verification_summary_fields():
    rng = np.random.default_rng(0)
    labels = np.tile([True, False], 100)
    scores = rng.normal(labels * 3.0, 1.0)
    s = M.verification_summary(scores, labels, np.repeat(np.arange(10), 20))
    assert s["pairs"] == 200 and s["genuine"] == 100
    assert 0.9 < s["accuracy"] <= 1.0 and s["accuracy_ci95"][0] <= s["accuracy"] <= s["accuracy_ci95"][1]
    assert s["fmr100"] == pytest.approx(1 - s["tar_at_far_1e-2"])
    assert 0 <= s["eer"] < 0.2 and s["auc"] > 0.95


def test_fold_bootstrap_ci_brackets_the_kfold_estimate_with_unequal_folds():
    # fold 0: 10 pairs all right; fold 1: 2 pairs both wrong -> k-fold accuracy 0.5, pooled mean 10/12
    correct = np.r_[np.ones(10), np.zeros(2)]
    folds = np.r_[np.zeros(10), np.ones(2)]
    lo, hi = M.fold_bootstrap_ci(correct, folds)
    assert lo == hi == 0.5  # each fold is constant: every resample gives the same per-fold accuracies
    rng = np.random.default_rng(2)
    correct = rng.random(300) < 0.8
    folds = np.repeat(np.arange(10), 30)
    lo, hi = M.fold_bootstrap_ci(correct, folds)
    per_fold = np.mean([correct[folds == f].mean() for f in range(10)])
    assert lo < per_fold < hi and hi - lo < 0.15
    assert M.fold_bootstrap_ci(correct, folds) == (lo, hi)


def test_verification_summary_honours_the_bootstrap_count():
    rng = np.random.default_rng(1)
    labels = np.repeat([True, False], 100)
    scores = np.where(labels, 0.6, 0.4) + rng.normal(0, 0.15, 200)
    folds = np.tile(np.arange(10), 20)
    a = M.verification_summary(scores, labels, folds, bootstrap=1000)
    b = M.verification_summary(scores, labels, folds, bootstrap=1000)
    c = M.verification_summary(scores, labels, folds, bootstrap=20)
    assert a["accuracy_ci95"] == b["accuracy_ci95"]  # fixed seed
    assert c["accuracy_ci95"] != a["accuracy_ci95"]  # a different number of resamples is really used
    assert c["accuracy_ci95"] == list(M.fold_bootstrap_ci(
        M.kfold_accuracy(scores, labels, folds).correct, folds, n=20, seed=0))
