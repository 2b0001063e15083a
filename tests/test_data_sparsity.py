"Sparsity task: the measured fraction of label-relevant tokens equals the parameter."
import numpy as np
import pytest
from kattn.data import sparsity as S


@pytest.mark.parametrize("rho", [0.01, 0.05, 0.2, 0.5, 1.0])
def test_measured_fraction_matches_parameter(rho):
    n = 100
    X, y, R = S.generate(32, n, rho, num_classes=3, noise_vocab=8, seed=4)
    M = S.measure_relevance(X, 3, 8)
    np.testing.assert_array_equal(M, R)
    K = max(1, round(rho * n))
    assert (M.sum(1) == K).all()
    assert abs(M.mean() - rho) <= 1 / (2 * n)


def test_labels_follow_rule_and_balance():
    X, y, R = S.generate(2000, 40, 0.1, num_classes=2, seed=0)
    vals = np.where(R, X - 17, 0)
    np.testing.assert_array_equal(y, vals.sum(1) % 2)
    # uniform signal values give uniform labels: mean within 4 standard errors of 1/2
    assert abs(y.mean() - 0.5) < 4 * 0.5 / np.sqrt(2000)


def test_noise_tokens_never_matter():
    X, y, R = S.generate(16, 60, 0.1, seed=1)
    rng = np.random.default_rng(0)
    Z = X.copy(); Z[~R] = rng.integers(1, 17, size=(~R).sum())
    np.testing.assert_array_equal(S.label_of(Z), y)


def test_deterministic_and_errors():
    a = S.generate(4, 20, 0.2, seed=3); b = S.generate(4, 20, 0.2, seed=3)
    for u, v in zip(a, b): np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="sparsity"): S.generate(1, sparsity=1.5)
    with pytest.raises(ValueError, match="num_classes"): S.generate(1, num_classes=1)
