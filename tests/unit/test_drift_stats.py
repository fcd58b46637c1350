from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import pdist

from care_companion.monitoring.stats import (
    KL_BASELINE_THRESHOLD,
    adjust_p_values,
    class_mix_two_sample,
    confidence_shift,
    drift_verdict,
    kl_baseline,
    kl_divergence,
    ks_features,
    mmd_test,
    rejection_two_sample,
)

NAMES = [f"f{i}" for i in range(10)]
EXPECTED_MIX = np.array([0.6, 0.3, 0.1])
REFERENCE_REJECTION_RATE = 0.02


# --- multiplicity corrections -------------------------------------------------------------------


def test_bonferroni():
    np.testing.assert_allclose(adjust_p_values([0.01, 0.3, 0.02], "bonferroni"), [0.03, 0.9, 0.06])
    np.testing.assert_allclose(adjust_p_values([0.6, 0.2], "bonferroni"), [1.0, 0.4])


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, 3*0.03, max(2*0.04, 0.09), 1*0.5; input order kept.
    np.testing.assert_allclose(adjust_p_values([0.04, 0.01, 0.5, 0.03], "holm"), [0.09, 0.04, 0.5, 0.09])
    # Monotonicity: 1*0.03 would be below the previous 2*0.02 = 0.04.
    np.testing.assert_allclose(adjust_p_values([0.01, 0.02, 0.03], "holm"), [0.03, 0.04, 0.04])
    np.testing.assert_allclose(adjust_p_values([0.4, 0.5], "holm"), [0.8, 0.8])
    np.testing.assert_allclose(adjust_p_values([0.7, 0.9]), [1.0, 1.0])


def test_benjamini_hochberg_by_hand():
    # m/rank * p = 0.04, 0.08, 0.06, 0.2; step-up minimum from the largest p down.
    np.testing.assert_allclose(adjust_p_values([0.2, 0.045, 0.04, 0.01], "fdr_bh"), [0.2, 0.06, 0.06, 0.04])
    np.testing.assert_allclose(adjust_p_values([0.01, 0.02, 0.03, 0.04], "fdr_bh"), [0.04] * 4)
    np.testing.assert_allclose(adjust_p_values([0.9, 0.8], "fdr_bh"), [0.9, 0.9])


def test_adjust_edge_cases():
    assert adjust_p_values([], "holm").size == 0
    np.testing.assert_allclose(adjust_p_values([0.3], "fdr_bh"), [0.3])
    with pytest.raises(ValueError, match="unknown correction"):
        adjust_p_values([0.1, 0.2], "sidak")  # type: ignore[arg-type]
    for bad in ([1.2], [-0.1], [np.nan]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            adjust_p_values(bad)


# --- per-family tests ---------------------------------------------------------------------------


def test_ks_features_records_and_flags_the_shifted_feature():
    rng = np.random.default_rng(0)
    reference, current = rng.normal(size=(200, 10)), rng.normal(size=(100, 10))
    current[:, 3] += 1.5
    result = ks_features(reference, current, NAMES, correction="bonferroni")
    assert [f.name for f in result.features] == NAMES
    assert result.flagged() == ["f3"]
    f3 = result.features[3]
    assert f3.statistic == pytest.approx(stats.ks_2samp(reference[:, 3], current[:, 3]).statistic)
    assert f3.adjusted == pytest.approx(min(1.0, 10 * f3.p_value))
    assert result.p_value == min(f.adjusted for f in result.features) == f3.adjusted
    assert result.statistic == max(f.statistic for f in result.features)


def test_ks_features_degenerate_inputs():
    same = ks_features(np.ones((5, 2)), np.ones((4, 2)), ["a", "b"])
    assert same.p_value == 1.0 and all(f.p_value == 1.0 for f in same.features)
    different = ks_features(np.zeros((30, 1)), np.ones((30, 1)), ["a"])
    assert different.p_value < 1e-6 and not math.isnan(different.statistic)
    with pytest.raises(ValueError, match="empty"):
        ks_features(np.empty((0, 2)), np.ones((4, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="column mismatch"):
        ks_features(np.ones((5, 2)), np.ones((4, 2)), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        ks_features(np.full((5, 1), np.nan), np.ones((4, 1)), ["a"])


def _naive_mmd(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_statistic_bandwidth_and_p_value_form():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.5, 1, size=(9, 3))
    result = mmd_test(x, y, permutations=19, seed=3)
    assert result.bandwidth == pytest.approx(np.median(pdist(np.vstack([x, y]))))
    assert result.statistic == pytest.approx(_naive_mmd(x, y, result.bandwidth))
    assert result.p_value * 20 == pytest.approx(round(result.p_value * 20))  # (1 + count) / (1 + 19)
    assert 1 / 20 <= result.p_value <= 1.0
    assert mmd_test(x, y, permutations=19, seed=3) == result
    fixed = mmd_test(x, y, permutations=5, bandwidth=2.0)
    assert fixed.bandwidth == 2.0 and fixed.statistic == pytest.approx(_naive_mmd(x, y, 2.0))


def test_mmd_obvious_shift_gets_the_smallest_p_value():
    rng = np.random.default_rng(2)
    result = mmd_test(rng.normal(size=(60, 4)), rng.normal(3, 1, size=(40, 4)), permutations=99)
    assert result.p_value == pytest.approx(1 / 100)


def test_mmd_degenerate_inputs():
    constant = mmd_test(np.ones((6, 2)), np.ones((5, 2)), permutations=50)
    assert constant.p_value == 1.0 and constant.statistic == pytest.approx(0.0) and constant.bandwidth == 1.0
    with pytest.raises(ValueError, match="empty"):
        mmd_test(np.empty((0, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        mmd_test(np.ones((1, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="column mismatch"):
        mmd_test(np.ones((4, 2)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="permutations"):
        mmd_test(np.ones((4, 2)), np.ones((5, 2)), permutations=0)


def test_class_mix_two_sample_matches_scipy_contingency():
    result = class_mix_two_sample([200, 120, 80], [40, 35, 25])
    expected = stats.chi2_contingency([[200, 120, 80], [40, 35, 25]], correction=False)
    assert (result.statistic, result.p_value) == pytest.approx((expected.statistic, expected.pvalue))
    assert not result.no_data and result.total == 100


def test_class_mix_pools_small_cells_and_flags_an_unseen_class():
    # the third class: the window expects about 0.8 of it, so it is pooled with the fourth
    pooled = class_mix_two_sample([200, 180, 4, 16], [52, 40, 1, 7])
    by_hand = stats.chi2_contingency([[200, 180, 20], [52, 40, 8]], correction=False)
    assert pooled.p_value == pytest.approx(by_hand.pvalue)
    unseen = class_mix_two_sample([300, 300, 0], [40, 35, 25])
    assert unseen.p_value < 1e-6
    empty = class_mix_two_sample([10, 10], [0, 0])
    assert empty.no_data and empty.p_value == 1.0
    with pytest.raises(ValueError):
        class_mix_two_sample([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        class_mix_two_sample([1, 2], [1.5, 2.0])


def test_confidence_shift():
    rng = np.random.default_rng(3)
    reference, current = rng.beta(8, 2, size=300), rng.beta(4, 3, size=80)
    result = confidence_shift(reference, current)
    assert result.p_value < 1e-4
    assert result.mean_reference == pytest.approx(reference.mean()) and result.mean_current < result.mean_reference
    assert confidence_shift([0.9, 0.9], [0.9]).p_value == 1.0
    with pytest.raises(ValueError, match="empty"):
        confidence_shift([], [0.5])


def test_rejection_two_sample_is_a_one_sided_fisher_test():
    result = rejection_two_sample(15, 300, 10, 100)
    # P(X >= 10) for X hypergeometric: 25 rejections among 400 inputs, 100 of them in the window
    by_hand = sum(math.comb(25, k) * math.comb(375, 100 - k) for k in range(10, 26)) / math.comb(400, 100)
    assert result.p_value == pytest.approx(by_hand) and result.statistic == 0.1 and result.reference_rate == 0.05
    assert rejection_two_sample(0, 300, 0, 100).p_value == 1.0
    assert rejection_two_sample(0, 300, 5, 100).p_value < 0.01
    assert rejection_two_sample(30, 300, 0, 100).p_value == 1.0  # fewer rejections is not an alarm
    none = rejection_two_sample(15, 300, 0, 0)
    assert none.no_data and none.p_value == 1.0
    with pytest.raises(ValueError):
        rejection_two_sample(15, 300, 5, 4)
    with pytest.raises(ValueError):
        rejection_two_sample(301, 300, 1, 4)


def test_kl_divergence_and_baseline():
    hist = np.array([0.1, 0.2, 0.7])
    assert kl_divergence(hist, hist) == 0.0
    # KL(current || reference) in nats.
    assert kl_divergence([0.9, 0.1], [0.5, 0.5]) == pytest.approx(0.5 * math.log(25 / 9), abs=1e-5)
    assert kl_divergence([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-5)
    assert math.isfinite(kl_divergence([1.0, 0.0], [0.0, 1.0]))  # eps keeps empty bins finite
    window = np.array([[0.5, 0.5], [0.3, 0.7], [0.7, 0.3]])  # mean histogram (0.5, 0.5)
    assert kl_divergence([0.5, 0.5], window) == pytest.approx(0.0, abs=1e-12)
    assert kl_baseline([0.9, 0.1], [0.5, 0.5]).drift and KL_BASELINE_THRESHOLD == 0.1
    quiet = kl_baseline([0.5, 0.5], [0.52, 0.48])
    assert not quiet.drift and quiet.threshold == KL_BASELINE_THRESHOLD
    with pytest.raises(ValueError):
        kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError):
        kl_divergence([0.5, -0.5], [0.5, 0.5])


def test_verdict_by_hand():
    verdict = drift_verdict({"features": 0.01, "embedding": 0.04, "class_mix": None, "confidence": 0.5})
    # Holm over three families: 3*0.01, 2*0.04, 1*0.5.
    assert verdict.adjusted == pytest.approx({"features": 0.03, "embedding": 0.08, "confidence": 0.5})
    assert verdict.drifted and verdict.flagged == ["features"] and verdict.skipped == ["class_mix"]
    assert verdict.p_value == pytest.approx(0.03)
    nothing = drift_verdict({"features": None, "embedding": None})
    assert not nothing.drifted and nothing.p_value == 1.0 and nothing.adjusted == {}
    assert not drift_verdict({"features": 0.04, "embedding": 0.04}).drifted
    with pytest.raises(ValueError):
        drift_verdict({"features": float("nan")})
    with pytest.raises(ValueError):
        drift_verdict({"features": 0.5}, alpha=0)


# --- error rates over repeated seeded trials ---------------------------------------------------


def _family_p_values(rng: np.random.Generator, shift: float) -> dict[str, float]:
    """One simulated monitoring window: every family drawn from the reference law moved by ``shift`` sd."""
    n_ref, n_cur = 60, 50
    features = ks_features(rng.normal(size=(n_ref, 10)), rng.normal(shift, 1, size=(n_cur, 10)), NAMES)
    embedding = mmd_test(rng.normal(size=(n_ref, 4)), rng.normal(shift, 1, size=(n_cur, 4)), permutations=99, seed=0)
    reference_counts, counts = rng.multinomial(n_ref, EXPECTED_MIX), rng.multinomial(n_cur, EXPECTED_MIX)
    confidence = confidence_shift(rng.beta(8, 2, size=n_ref), rng.beta(8, 2, size=n_cur))
    rejections = rejection_two_sample(
        int(rng.binomial(n_ref, REFERENCE_REJECTION_RATE)),
        n_ref,
        int(rng.binomial(n_cur, REFERENCE_REJECTION_RATE)),
        n_cur,
    )
    return {
        "features": features.p_value,
        "embedding": embedding.p_value,
        "class_mix": class_mix_two_sample(reference_counts, counts).p_value,
        "confidence": confidence.p_value,
        "rejections": rejections.p_value,
    }


def _alarm_rates(shift: float, trials: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    alarms = dict.fromkeys(["features", "embedding", "class_mix", "confidence", "rejections", "verdict"], 0)
    for _ in range(trials):
        p = _family_p_values(rng, shift)
        for family, value in p.items():
            alarms[family] += value <= 0.05
        alarms["verdict"] += drift_verdict(p, alpha=0.05).drifted
    return {family: count / trials for family, count in alarms.items()}


def test_false_alarm_rates_under_no_drift():
    rates = _alarm_rates(shift=0.0, trials=300, seed=10)
    # Nominal 0.05; 0.08 is about 2.4 binomial standard deviations above it for 300 trials.
    for family in ("features", "embedding", "class_mix", "confidence", "rejections", "verdict"):
        assert rates[family] <= 0.08, (family, rates)


def test_detection_rates_under_a_one_sd_shift():
    rates = _alarm_rates(shift=1.0, trials=100, seed=11)
    assert rates["features"] >= 0.9, rates
    assert rates["embedding"] >= 0.9, rates
    assert rates["verdict"] >= 0.9, rates


def test_uncorrected_features_would_fail_the_false_alarm_bound():
    """Sanity check of the null simulation: without correction, 10 KS tests alarm far more often."""
    rng = np.random.default_rng(12)
    raw_alarms = 0
    for _ in range(100):
        result = ks_features(rng.normal(size=(60, 10)), rng.normal(size=(50, 10)), NAMES)
        raw_alarms += min(f.p_value for f in result.features) <= 0.05
    assert raw_alarms / 100 > 0.2
