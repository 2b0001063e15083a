"Stability analysis: Lemma 2 (closed form and simulation), Theorem 3 helper, Fig. 1b regression, NPRF + RPE."
import math

import pytest
import torch

from kattn.stability import (FIG1B_PAPER, attention_entropy, estimate_moments, exact_attention_row, fig1b_errors,
                             kernel_estimates, l1_error, locality_bias, prf_variance, rf_attention_row,
                             sample_complexity, sample_variance_se, sphere_points, trf_variance)

D64 = torch.float64


def _pair(R, cos, d=6):
    x = torch.zeros(d, dtype=D64); x[0] = R
    y = torch.zeros(d, dtype=D64); y[0], y[1] = R * cos, R * math.sqrt(1 - cos * cos)
    return x, y


@pytest.mark.parametrize("kind", ["prf", "trf"])
@pytest.mark.parametrize("R,cos", [(0.3, 0.5), (0.6, -0.8), (0.7, 0.0)])
def test_lemma2_by_simulation(kind, R, cos):
    x, y = _pair(R, cos)
    m, T = 3, 30000
    var, se = sample_variance_se(estimate_moments(x, y, kind), m, T)
    closed = (prf_variance if kind == "prf" else trf_variance)(x, y, m)
    torch.testing.assert_close(var, closed, rtol=1e-10, atol=0)
    est = kernel_estimates(x, y, m, T, kind, torch.Generator().manual_seed(11))
    assert abs(est.mean() - math.exp(x @ y)) < 5 * math.sqrt(var / T)
    assert abs(est.var() - var) < 5 * se


def test_variance_formulas_special_cases():
    x = torch.tensor([0.3, 0.4], dtype=D64)
    # TRF: cos(w.(x - y)) = 1 for x == y, so the estimate is exact (zero variance)
    assert trf_variance(x, x, 5).item() == 0.0
    # PRF is exact when x == -y (x + y = 0)
    assert prf_variance(x, -x, 5).item() == 0.0
    torch.testing.assert_close(prf_variance(x, x, 2), torch.expm1(torch.tensor(1.0, dtype=D64)) * math.exp(0.5) / 2)


def test_sample_complexity():
    assert sample_complexity(1024, 1, 0.1, 0.1) == pytest.approx(1024 * math.e ** 4 / 1e-3)
    assert sample_complexity(10, 2, 0.2, 0.5) / sample_complexity(10, 1, 0.2, 0.5) == pytest.approx(math.exp(12))
    with pytest.raises(ValueError): sample_complexity(10, 1, 0.6, 0.1)


@pytest.mark.parametrize("kind", ["prf", "trf"])
def test_rf_row_approaches_exact(kind):
    g = torch.Generator().manual_seed(0)
    q, k = sphere_points(1, 8, 0.7, g)[0], sphere_points(9, 8, 0.7, g)
    b = torch.randn(9, generator=g, dtype=D64)
    w = torch.randn(400000, 8, generator=g, dtype=D64)
    a = rf_attention_row(q, k, w, kind, b)
    torch.testing.assert_close(a.sum(), torch.tensor(1.0, dtype=D64))
    assert l1_error(a, exact_attention_row(q, k, b)) < 0.01


def test_fig1b_regression_r1_and_r8():
    # Luo Fig. 1b: R=1, m=1024 -> ~0.05; R=8 -> ~2 (saturated). Per-trial sd at R=1, m=1024 is ~0.005.
    g = torch.Generator().manual_seed(0)
    e1 = fig1b_errors(1.0, 1024, trials=4, generator=g)
    assert abs(e1.mean().item() - FIG1B_PAPER[1][1024]) < 0.3 * FIG1B_PAPER[1][1024]
    e8 = fig1b_errors(8.0, 64, trials=2, generator=g)
    assert e8.min() > 1.85


def test_error_decreases_like_inverse_sqrt_m_at_r1():
    g = torch.Generator().manual_seed(1)
    e16 = fig1b_errors(1.0, 16, trials=6, n_keys=256, generator=g).mean()
    e256 = fig1b_errors(1.0, 256, trials=6, n_keys=256, generator=g).mean()
    assert 2.5 < (e16 / e256).item() < 6.5         # sqrt(16) = 4


def test_normalization_plus_rpe_is_sharp_and_accurate():
    g = torch.Generator().manual_seed(2)
    n = 256
    bias = locality_bias(n, 1.0)
    q, k = sphere_points(4, 64, 1.0, g), sphere_points(4 * n, 64, 1.0, g).reshape(4, n, 64)
    ent = attention_entropy(exact_attention_row(q, k, bias)).mean().item()
    q8, k8 = sphere_points(4, 64, 8.0, g), sphere_points(4 * n, 64, 8.0, g).reshape(4, n, 64)
    ent8 = attention_entropy(exact_attention_row(q8, k8)).mean().item()
    assert ent < 2.0 and ent8 < 2.0                 # both sharp (uniform would be log 256 = 5.5)
    err_rpe = fig1b_errors(1.0, 64, trials=4, n_keys=n, bias=bias, generator=g).mean().item()
    err8 = fig1b_errors(8.0, 64, trials=4, n_keys=n, generator=g).mean().item()
    assert err_rpe < 0.25 and err8 > 1.8


def test_locality_bias_and_entropy():
    torch.testing.assert_close(locality_bias(5, 2.0), torch.tensor([-1.0, -0.5, 0.0, -0.5, -1.0], dtype=D64))
    assert attention_entropy(torch.full((8,), 1 / 8, dtype=D64)).item() == pytest.approx(math.log(8))
    assert attention_entropy(torch.tensor([1.0, 0.0], dtype=D64)).item() == 0.0


def test_errors():
    x = torch.zeros(3, dtype=D64)
    with pytest.raises(ValueError, match="kind"): estimate_moments(x, x, "rbf")
    with pytest.raises(ValueError, match="kind"): rf_attention_row(x, x[None], x[None], "rbf")
    with pytest.raises(ValueError, match="kind"): kernel_estimates(x, x, 2, 2, "rbf")


# --- the large-norm sweep over registered attentions ------------------------------------------------------------------
def test_large_norm_sweep_rows_and_guarantees():
    from kattn.stability import large_norm_sweep
    rows = large_norm_sweep(["softmax", "normalized_softmax", "performer", "trf"], scales=(1, 30, 100))
    assert len(rows) == 4 * 2 * 3 and not any(r["error"] for r in rows)
    by = {(r["name"], r["dtype"], r["scale"]): r for r in rows}
    for dt in ("float32", "float64"):
        for s in (1, 30, 100):
            assert by[("softmax", dt, s)]["max_err"] < 1e-5 and by[("normalized_softmax", dt, s)]["max_err"] < 1e-5
            assert by[("trf", dt, s)]["finite"] and by[("performer", dt, s)]["finite"]
            assert by[("trf", dt, s)]["max_err"] <= by[("trf", dt, s)]["v_range"] * (1 + 1e-6)   # clipped into the values' box
    assert by[("performer", "float64", 30)]["max_err"] > by[("performer", "float64", 1)]["max_err"]   # Lemma 2
